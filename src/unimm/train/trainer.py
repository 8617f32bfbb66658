"""One training loop for every paradigm (the paradigm supplies `format` and `loss`).

AdamW (no decay on norms), linear warm-up then cosine to `min_lr_ratio`, gradient clipping,
bf16 autocast on CPU and GPU, optional EMA of the weights, a wall-clock budget, periodic
evaluation with the world's judge, a tqdm bar with rate and ETA (schedule, budget and bar:
train/schedule.py, shared with the tokenizer and encoder loops), metrics.csv + curves.png, and
safetensors checkpoints that resume exactly (the data stream is a function of the step, so the
next loss after a restart equals the one the uninterrupted run would have seen).

A Trainer trains the model only: the run folder must already hold its tokenizers
(train/tokenizer.py `prepare_tokenizers`, which `unimm train` runs first).
"""

from __future__ import annotations

import copy
import csv
import io
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ..data.worlds import make_world
from ..eval.evaluate import evaluate
from ..paradigms.sequence import split_by_length
from ..pipeline import Pipeline
from ..runs import (
    RunConfig,
    RunError,
    build_parts,
    has_tokenizers,
    load_config,
    load_tokenizers,
    recorded_weights,
    resolve_device,
    save_config,
    save_run_weights,
)
from ..runs.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    load_weights,
    remove_stale,
    save_checkpoint,
)
from ..utils.io import write_text
from ..utils.plot import curves
from .data import Encoder, TaskStream
from .schedule import Budget, lr_at, progress_bar


def _optimizer(model, cfg):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=False)


class Trainer:
    def __init__(self, cfg: RunConfig, run_dir, progress: bool = True):
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        tc = cfg.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(tc.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for p in remove_stale(self.run_dir):        # what a killed write left behind
            tqdm.write(f"removed {p} (left by an interrupted write)")
        if not has_tokenizers(self.run_dir):
            raise RunError(f"{self.run_dir} has no tokenizers: give it them first with "
                           f"unimm.train.tokenizer.prepare_tokenizers(cfg, run_dir) (`unimm "
                           f"train` does)")
        text_tok, image_tok = load_tokenizers(self.run_dir)
        torch.manual_seed(tc.seed)         # the initialisation depends on the seed only
        self.parts = build_parts(cfg, text_tok, image_tok)
        self.parts.paradigm.init_pretrained(self.parts.model)
        if tc.init_from and find_checkpoint(self.run_dir / "ckpt") is None:
            self._warm_start(Path(tc.init_from))      # (resume() loads the checkpoint instead)
        save_config(cfg, self.parts.vocab, self.run_dir, recorded_weights(self.run_dir))
        self.model = self.parts.model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval() if tc.ema > 0 else None
        self.opt = _optimizer(self.model, tc)
        world = make_world(cfg.data)
        self.stream = TaskStream(world.source("train"), Encoder(text_tok, image_tok),
                                 self.parts.paradigm, world.task_weights(), tc.batch_size,
                                 tc.seed, tc.data_offset)
        self.step, self.max_steps, self.elapsed = 0, tc.max_steps, 0.0
        self.horizon_fixed = False
        self.budget_s = 60.0 * tc.minutes          # fit(minutes=...) sets the run's own
        self._compiled = None
        if tc.compile:
            self._compiled = torch.compile(self.model.backbone, dynamic=True)
        self.history: list[dict] = []

    def _warm_start(self, src: Path) -> None:
        other = load_config(src)
        if other.model.backbone != self.cfg.model.backbone:    # code options may be new here
            raise RunError(f"train.init_from={src}: its model shape {other.model.backbone} "
                           f"differs from this run's {self.cfg.model.backbone}")
        kept = load_weights(self.parts.model, src / "model.safetensors", allow_missing=True)
        if kept:
            tqdm.write(f"warm start from {src}; new parameters keep their init: {kept}")

    # ---- state -------------------------------------------------------------------------------
    def resume(self) -> bool:
        ck = self.run_dir / "ckpt"
        if find_checkpoint(ck) is None:
            return False
        st = load_checkpoint(ck, self.model, self.opt, self.ema)
        self.step, self.max_steps, self.elapsed = st["step"], st["max_steps"], st["elapsed"]
        self.horizon_fixed = st.get("horizon_fixed", False)
        self.history = st.get("history", [])
        return True

    def checkpoint(self) -> None:
        save_checkpoint(self.run_dir / "ckpt", self.model, self.opt, self.ema,
                        {"step": self.step, "max_steps": self.max_steps, "elapsed": self.elapsed,
                         "horizon_fixed": self.horizon_fixed, "history": self.history})
        save_run_weights(self.parts, self.ema or self.model, self.run_dir)
        self._write_logs()

    def _write_logs(self) -> None:
        if not self.history:
            return
        keys = sorted({k for h in self.history for k in h}, key=lambda k: (k != "step", k))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        write_text(self.run_dir / "metrics.csv", buf.getvalue())
        steps = [h["step"] for h in self.history if "loss" in h]
        series = {k: [h[k] for h in self.history if "loss" in h]
                  for k in ("loss", "loss/text", "loss/image")}
        curves(steps, series, self.run_dir / "curves.png", title=f"{self.cfg.name}: training loss",
               logy=True)
        ev = [h for h in self.history if any(k.startswith("val/") for k in h)]
        if ev:
            keys = sorted({k for h in ev for k in h if k.startswith("val/")})
            curves([h["step"] for h in ev], {k: [h.get(k, float("nan")) for h in ev] for k in keys},
                   self.run_dir / "eval_curves.png", title=f"{self.cfg.name}: validation")

    # ---- loop --------------------------------------------------------------------------------
    def train_step(self) -> dict:
        tc = self.cfg.train
        time_frac = (self.elapsed / self.budget_s if tc.horizon == "time" and self.budget_s
                     else None)
        lr = lr_at(self.step, tc.lr, tc.warmup_steps, self.max_steps, tc.min_lr_ratio, time_frac)
        for g in self.opt.param_groups:
            g["lr"] = lr
        batch = self.stream.batch(self.step).to(self.device)
        self.model.train()
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
        gen = torch.Generator(device=self.device).manual_seed(tc.seed * 1_000_003 + self.step)
        loss, stats = self._compiled_loss_backward(batch, gen, amp)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                for pe, pm in zip(self.ema.parameters(), self.model.parameters()):
                    pe.lerp_(pm, 1 - tc.ema)
        self.step += 1
        return {"loss": loss.item(), "lr": lr, "grad_norm": float(gnorm),
                "tokens": int(batch.valid.sum()), **stats}

    def _compiled_loss_backward(self, batch, gen, amp) -> tuple[torch.Tensor, dict]:
        """`_loss_backward` with the compiled backbone swapped in for this step only (the model
        that is saved, evaluated and sampled from is always the plain one). A compile error
        falls back to eager for the rest of the run; the failed step is redone eagerly."""
        if self._compiled is None:
            return self._loss_backward(batch, gen, amp)
        plain = self.model.backbone
        self.model._modules["backbone"] = self._compiled
        try:
            return self._loss_backward(batch, gen, amp)
        except Exception as e:  # noqa: BLE001 - any compiler failure: warn, train eagerly
            if not type(e).__module__.startswith("torch._"):
                raise
            tqdm.write(f"warning: train.compile failed ({type(e).__name__}: "
                       f"{str(e).splitlines()[0][:200]}); training eagerly")
            self._compiled = None
            self.opt.zero_grad(set_to_none=True)
            return self._loss_backward(batch, gen, amp)
        finally:
            self.model._modules["backbone"] = plain

    def _loss_backward(self, batch, gen, amp) -> tuple[torch.Tensor, dict]:
        """Loss of the batch and its gradients. With train.length_groups > 1 the rows go in
        groups of similar length, each padded to its own longest row only, and the groups'
        losses are weighted by their share of what the loss averages over
        (Paradigm.loss_share), so the step trains the same objective with less padding."""
        par = self.parts.paradigm
        groups = self.cfg.train.length_groups
        if groups <= 1:
            with amp:
                loss, stats = par.loss(self.model, batch, gen)
            loss.backward()
            return loss, stats
        parts = [batch.rows(g) for g in split_by_length(batch.valid.sum(1).tolist(), groups)]
        shares = [par.loss_share(p) for p in parts]
        total, out, sums = sum(shares), 0.0, {}
        for p, sh in zip(parts, shares):
            if sh == 0:
                continue
            with amp:
                loss, stats = par.loss(self.model, p, gen)
            (loss * (sh / total)).backward()
            out = out + loss.detach() * (sh / total)
            for k, v in stats.items():
                a, w = sums.get(k, (0.0, 0.0))
                sums[k] = (a + v * sh, w + sh) if v == v else (a, w)   # NaN: no such targets
        stats = {k: a / w if w else float("nan") for k, (a, w) in sums.items()}
        return torch.as_tensor(out), stats

    def evaluate(self, quick: bool = True) -> dict:
        model = self.ema or self.model
        model.eval()
        pipe = Pipeline(self.parts, model=model, device=self.device)
        return evaluate(pipe, "val", self.cfg.eval, quick=quick, progress=False)

    def fit(self, minutes: float | None = None) -> dict:
        tc = self.cfg.train
        budget = Budget(minutes if minutes is not None else tc.minutes, self.elapsed)
        self.budget_s = budget.seconds
        start_step, elapsed_0 = self.step, self.elapsed
        bar = progress_bar(self.max_steps, self.cfg.name, self.progress, initial=self.step)
        tokens = 0
        self._last_t = time.perf_counter()         # tokens/s windows start now, also on resume
        # stop once the budget is spent (at once for a resumed run that had spent it)
        while self.step < self.max_steps and not budget.spent(self.elapsed):
            rec = self.train_step()
            tokens += rec.pop("tokens")
            self.elapsed = budget.elapsed
            if budget and tc.horizon == "time" and self.step % tc.log_every == 0:
                # the bar's total: the step count the budget will reach at the rate so far
                bar.total = min(self.max_steps, max(self.step, int(
                    self.step + (budget.seconds - self.elapsed) * (self.step - start_step)
                    / max(self.elapsed - elapsed_0, 1e-6))))
            if budget and tc.horizon == "steps" and not self.horizon_fixed \
                    and self.step - start_step == 20:
                # Fix the schedule horizon once from the measured rate; it is saved with the
                # checkpoint, so a resumed run follows the same schedule.
                per_step = (self.elapsed - elapsed_0) / 20
                left = budget.seconds - self.elapsed
                self.max_steps = min(self.max_steps, self.step + int(left / max(per_step, 1e-6)))
                self.horizon_fixed = True
                bar.total = self.max_steps
            if self.step % tc.log_every == 0 or self.step == self.max_steps:
                rec.update(step=self.step, time_s=round(self.elapsed, 1),
                           tokens_per_s=round(tokens / max(1e-6, self._window()), 1))
                tokens = 0
                self.history.append(rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}")
            if tc.eval_every and self.step % tc.eval_every == 0 and self.step < self.max_steps:
                ev = {f"val/{k}": v for k, v in self.evaluate().items() if isinstance(v, float)}
                self.history.append({"step": self.step, **ev})
                bar.write(f"step {self.step}: " + ", ".join(      # headline numbers only
                    f"{k[4:]} {v:.3f}" for k, v in ev.items()
                    if k.endswith(("/overall", "/scene_correct", "/full_scene", "/success"))))
            if self.step % tc.ckpt_every == 0:
                self.checkpoint()
            bar.update(1)
        bar.close()
        self.checkpoint()
        return {"step": self.step, "elapsed_s": self.elapsed}

    _last_t = None

    def _window(self) -> float:
        """Seconds since the last log line (for tokens/s)."""
        now = time.perf_counter()
        last, self._last_t = self._last_t, now
        return now - (last or now)

"""Tokenizer training: an image tokenizer on a fresh stream of a world's images (measured by
the world's judge), and a run's tokenizers, trained or copied into its folder.

`prepare_tokenizers(cfg, run_dir)` is an explicit step before a run trains: `unimm train` runs
it when the run folder has no tokenizers; code that builds a `Trainer` itself calls it first
(a Trainer only loads them).

Notable choices of `train_image_tokenizer`:
- Data: step s sees train-split images [s*B, (s+1)*B) (rendering is ~30k images/s, so every
  batch is new and there is no dataset to store). Val images judge progress; the final numbers
  come from the first `test_scenes` images of the test split, which the model never saw.
- The bar that matters is the judge: it must read the reconstruction of a test scene exactly
  like the original. PSNR, codebook usage and perplexity are reported beside it.
- Codebook: k-means++ seeding on the first `init_images` images, EMA updates, dead-code restarts
  every `restart_every` steps (see vq.py for why error-weighted restarts).
- AdamW with linear warmup and cosine decay; optional bf16 autocast for the MLPs (the quantiser
  always runs in float32).
- Outputs (all atomic): tokenizer.safetensors + tokenizer.json, metrics.json, recon.png.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from ..data.splits import WorldConfig
from ..data.world import World
from ..data.worlds import DataConfig, make_world
from ..runs import RunConfig, RunError, load_tokenizers
from ..runs.checkpoint import remove_stale
from ..runs.config import TokenizerTrainConfig
from ..tokenizers.image import ImageTokenizer, build_image_tokenizer
from ..tokenizers.text import TextTokenizer
from ..utils.config import ConfigError, to_dict
from ..utils.io import write_json
from ..utils.plot import image_grid
from .schedule import Budget, lr_at, progress_bar


def _images(world, start: int, n: int) -> np.ndarray:
    return np.stack([world.image(i) for i in range(start, start + n)])    # (n, H, W, 3) uint8


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else 10.0 * math.log10(255.0 ** 2 / mse)


@torch.no_grad()
def evaluate(tok: ImageTokenizer, images: np.ndarray, truth=None, reader=None) -> dict:
    """Judge exact-match, PSNR, codebook usage/perplexity of decode(encode(images)).
    `reader` turns images into comparable readings (World.read: the world's judge); without
    one (a world with no judge) there is no judge_exact."""
    codes = tok.encode(images)
    recon = tok.decode(codes)
    out = {}
    if reader is not None:
        if truth is None:
            truth = reader(images)
        out["judge_exact"] = float(np.mean([j == t for j, t in zip(reader(recon), truth)]))
    out.update(psnr=psnr(recon, images), n_images=int(len(images)))
    out.update(tok.code_stats(codes))
    return out


def _machine() -> dict:
    return {"loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}


def train_image_tokenizer(cfg: TokenizerTrainConfig, out_dir, minutes: float | None = None,
                          progress: bool = True, world: World | None = None) -> dict:
    """Train, evaluate and save a tokenizer into out_dir; return the metrics dict (also written
    to out_dir/metrics.json). `minutes` caps the wall-clock training time. `world`: whose
    images it learns and whose judge measures it (default: ShapesWorld at the tokenizer's
    image size)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    tcfg = cfg.tokenizer
    world = world or make_world(DataConfig(world=WorldConfig(image_size=tcfg.image_size)))
    if world.image_size != tcfg.image_size:
        raise ValueError(f"the tokenizer reads {tcfg.image_size}px images but the {world.name} "
                         f"world's are {world.image_size}px")
    train, val, test = (world.images(s) for s in ("train", "val", "test"))
    reader = world.read
    tok = build_image_tokenizer(tcfg)
    opt = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    amp = cfg.autocast == "bf16"
    load_start = _machine()

    val_imgs = _images(val, 0, cfg.val_images)
    val_truth = reader(val_imgs)
    # Seed the codebook from data (k-means++) before the first step.
    init = tok.to_pixels(_images(train, 10 ** 8, cfg.init_images))
    with torch.no_grad():
        tok.quantizer.init_kmeanspp(tok.latents(init).reshape(-1, tcfg.latent_dim).float(), gen)

    history, restarts = [], 0
    budget = Budget(minutes or 0.0)
    bar = progress_bar(cfg.steps, f"tokenizer {tcfg.kind} {tcfg.image_size}px", progress)
    step = 0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        tok.train()
        x = tok.to_pixels(_images(train, step * cfg.batch_size, cfg.batch_size))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            lo = tok.losses(x, cfg.background_keep)
        opt.zero_grad(set_to_none=True)
        lo["loss"].backward()
        opt.step()
        if cfg.restart_every and (step + 1) % cfg.restart_every == 0:
            restarts += tok.quantizer.restart_dead(lo["z"], lo["err"], cfg.dead_min_count, gen)
        if (step + 1) % 20 == 0:
            bar.set_postfix(recon=f"{lo['recon'].item():.2e}", restarts=restarts, refresh=False)
        last = step + 1 == cfg.steps or budget.spent()
        if (step + 1) % cfg.eval_every == 0 or last:
            tok.eval()
            ev = evaluate(tok, val_imgs, val_truth, reader)
            ev.update(step=step + 1, seconds=round(budget.elapsed, 1),
                      recon_loss=lo["recon"].item(), restarts=restarts)
            history.append(ev)
            judge = f"val judge {ev['judge_exact']:.3f} " if "judge_exact" in ev else "val "
            bar.write(f"step {step + 1}: {judge}psnr {ev['psnr']:.2f} usage {ev['usage']:.3f} "
                      f"ppl {ev['perplexity']:.0f} restarts {restarts}")
        bar.update(1)
        if last:
            break
    bar.close()
    train_s = budget.elapsed
    tok.eval()

    t1 = time.perf_counter()
    test_imgs = _images(test, 0, cfg.test_scenes)
    final = evaluate(tok, test_imgs, reader=reader)
    eval_s = time.perf_counter() - t1
    metrics = {
        "test": final,
        "codes_per_image": tok.codes_per_image,
        "grid": list(tok.grid),
        "codebook_size": tok.codebook_size,
        "steps": step + 1,
        "train_seconds": round(train_s, 1),
        "steps_per_second": round((step + 1) / train_s, 2),
        "images_seen": (step + 1) * cfg.batch_size,
        "eval_seconds": round(eval_s, 1),
        "parameters": sum(p.numel() for p in tok.parameters()),
        "machine_start": load_start,
        "machine_end": _machine(),
        "history": history,
        "config": to_dict(cfg),
    }
    tok.save(out)
    _recon_grid(tok, test_imgs[:8], out / "recon.png", reader)
    write_json(out / "metrics.json", metrics)
    return metrics


def _recon_grid(tok: ImageTokenizer, images: np.ndarray, path, reader) -> Path:
    """Originals (top row) over reconstructions (bottom row, red caption if the judge differs)."""
    recon = tok.reconstruct(images)
    ok = [a == b for a, b in zip(reader(images), reader(recon))] if reader else \
        [True] * len(images)
    caps = [f"test {i}" for i in range(len(images))] + \
           [f"recon {'ok' if o else 'WRONG'}" for o in ok]
    colors = ["black"] * len(images) + ["green" if o else "red" for o in ok]
    return image_grid(list(images) + list(recon), caps, path, ncols=len(images),
                      title="originals (top) / reconstructions (bottom)", colors=colors)


# ---- a run's tokenizers ---------------------------------------------------------------------

def _train_image_tokenizer(cfg: RunConfig, out: Path) -> None:
    tc = cfg.image_tokenizer
    if tc.tokenizer.image_size != cfg.data.world.image_size:
        raise ConfigError(f"image_tokenizer.tokenizer.image_size ({tc.tokenizer.image_size}) "
                          f"must equal data.world.image_size ({cfg.data.world.image_size})")
    train_image_tokenizer(tc, out, progress=False, world=make_world(cfg.data))


def prepare_tokenizers(cfg: RunConfig, run_dir: Path) -> tuple[TextTokenizer, ImageTokenizer]:
    """Give the run folder its tokenizers if it has none: copied from `train.init_from`, the
    image tokenizer copied from `image_tokenizer_path` or trained (`image_tokenizer`), the BPE
    fitted on the world's text corpus; then load them. Parts already there are kept."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale(run_dir)                  # what a killed write left behind
    if cfg.train.threads:                  # as the run trains (the tokenizer may say otherwise)
        torch.set_num_threads(cfg.train.threads)
    img_dir, txt_dir = run_dir / "tokenizer" / "image", run_dir / "tokenizer" / "text"
    if cfg.train.init_from and not (img_dir / "tokenizer.json").is_file():
        src = Path(cfg.train.init_from) / "tokenizer"
        if not (src / "image" / "tokenizer.json").is_file() or \
                not (src / "text" / "text_tokenizer.json").is_file():
            raise RunError(f"train.init_from={cfg.train.init_from}: no tokenizers under {src}")
        shutil.copytree(src, run_dir / "tokenizer", dirs_exist_ok=True)
    if not (img_dir / "tokenizer.json").is_file():
        if cfg.image_tokenizer_path:
            src = Path(cfg.image_tokenizer_path)
            if not (src / "tokenizer.json").is_file():
                raise RunError(f"image_tokenizer_path {src} holds no tokenizer.json")
            img_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, img_dir, dirs_exist_ok=True)
        else:
            _train_image_tokenizer(cfg, img_dir)
    if not (txt_dir / "text_tokenizer.json").is_file():
        corpus = make_world(cfg.data).text_corpus(cfg.data.text_corpus)
        tok = TextTokenizer.train(corpus, cfg.data.text_vocab_size)
        tok.save(txt_dir)
    return load_tokenizers(run_dir)

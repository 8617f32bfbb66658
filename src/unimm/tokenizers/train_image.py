"""Train an image tokenizer on a fresh stream of a world's images, then measure it.

Notable choices:
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.splits import WorldConfig
from ..data.world import World
from ..data.worlds import DataConfig, make_world
from ..utils.config import check_limits, to_dict
from ..utils.io import write_json
from ..utils.plot import image_grid
from .image import ImageTokenizer, ImageTokenizerConfig, build_image_tokenizer


@dataclass(frozen=True)
class TokenizerTrainConfig:
    """Defaults match configs/tokenizer.toml (32x32 ShapesWorld)."""

    tokenizer: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    steps: int = 1500
    batch_size: int = 256            # images per step (x codes_per_image latents)
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    background_keep: float = 0.1     # share of all-black patches trained on (PatchVQ)
    init_images: int = 256           # images whose latents seed the codebook (k-means++)
    restart_every: int = 50          # steps between dead-code restarts (0 = never)
    dead_min_count: float = 1.0      # codes assigned fewer times per restart window are dead
    eval_every: int = 500
    val_images: int = 512
    test_scenes: int = 2000          # final judge / PSNR measurement (test split)
    autocast: Literal["bf16", "none"] = "bf16"
    threads: int = 0                 # torch threads; 0 leaves the default
    seed: int = 0

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (0, 100000000), "batch_size": (1, 1048576),
                              "warmup_steps": (0, 100000000), "init_images": (1, 1000000),
                              "restart_every": (0, 100000000), "eval_every": (1, 100000000),
                              "val_images": (1, 1000000), "test_scenes": (1, 1000000),
                              "threads": (0, 1024)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("steps", "batch_size", "init_images", "eval_every", "val_images",
                     "test_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


def _images(world, start: int, n: int) -> np.ndarray:
    return np.stack([world.image(i) for i in range(start, start + n)])    # (n, H, W, 3) uint8


def _lr_at(step: int, cfg: TokenizerTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


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
    t0 = time.perf_counter()
    deadline = None if minutes is None else t0 + 60.0 * minutes
    bar = tqdm(range(cfg.steps), desc=f"tokenizer {tcfg.kind} {tcfg.image_size}px",
               disable=not progress, dynamic_ncols=True, mininterval=2.0)
    step = 0
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
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
        last = step + 1 == cfg.steps or (deadline is not None and time.perf_counter() > deadline)
        if (step + 1) % cfg.eval_every == 0 or last:
            tok.eval()
            ev = evaluate(tok, val_imgs, val_truth, reader)
            ev.update(step=step + 1, seconds=round(time.perf_counter() - t0, 1),
                      recon_loss=lo["recon"].item(), restarts=restarts)
            history.append(ev)
            judge = f"val judge {ev['judge_exact']:.3f} " if "judge_exact" in ev else "val "
            bar.write(f"step {step + 1}: {judge}psnr {ev['psnr']:.2f} usage {ev['usage']:.3f} "
                      f"ppl {ev['perplexity']:.0f} restarts {restarts}")
        if last:
            break
    bar.close()
    train_s = time.perf_counter() - t0
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

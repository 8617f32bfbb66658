"""Contrastive (CLIP-style) pre-training of the semantic image encoder (model/vit.py).

Janus reads input images with a SigLIP encoder trained contrastively on image-text pairs; this
is that stage at ShapesWorld scale: the ViT learns against captions of train scenes, and
decoupled-encoder runs (paradigms/decoupled.py) start from it (`decoupled.encoder_path`).

Notable choices:
- Loss: symmetric InfoNCE over the batch with a learned temperature (CLIP, Radford et al. 2021,
  arXiv:2103.00020, fig. 3), initialised at `temperature` and clamped to scale <= 100. Pairs
  that share a key (the same digit; the same scene) are all positives (soft targets), so
  digits, with ten captions, train correctly.
- Text tower: a tiny *bidirectional* transformer (the shared Backbone again, 1-D RoPE, mean
  pooling over real tokens) over a byte-level BPE fitted on the captions. Not bag-of-words:
  captions bind attributes ("a red circle and a blue square" vs "a blue circle and a red
  square"), which a bag of tokens cannot tell apart.
- Data: step s reads train examples [s B, (s + 1) B) with a *random* caption phrasing each
  (all five styles of data.text; digits: the varied generation prompts), so no phrasing is
  memorised. Val retrieval uses `val_scenes` held-out val scenes with their own random
  phrasings: top-1 / top-5, image -> caption and caption -> image, a hit being any item with
  the query's key.
- AdamW, linear warmup then cosine decay to 10 %; bf16 autocast on CPU (~2.5x faster than fp32
  for tiny transformers); `minutes` caps the wall clock (the schedule is not shortened).
- Output folder (written in a temporary sibling, then renamed into place): encoder.safetensors
  (both towers and the temperature), encoder.json (format tag, ViT config, training config,
  val metrics), text/ (the BPE), metrics.json.

Einops legend: B pairs, T text tokens, C embedding width.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from ..data.splits import WorldConfig
from ..data.world import World
from ..data.worlds import DataConfig, WorldName, make_world
from ..model.backbone import Backbone, BackboneConfig
from ..model.vit import (
    ENCODER_CONFIG,
    ENCODER_FORMAT,
    ENCODER_VERSION,
    ENCODER_WEIGHTS,
    ViT,
    ViTConfig,
)
from ..tokenizers.text import TextTokenizer
from ..utils.config import check_limits, to_dict
from ..utils.io import write_json
from .schedule import Budget, lr_at, progress_bar


@dataclass(frozen=True)
class TextTowerConfig:
    dim: int = 96
    n_layers: int = 2
    n_heads: int = 4
    max_len: int = 64              # captions are cut to this many BPE tokens (longest ~40)
    vocab_size: int = 512          # BPE fitted on `corpus` train captions (saturates ~510)
    corpus: int = 3000

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"dim": (1, 16384), "n_layers": (1, 512), "n_heads": (1, 1024),
                              "max_len": (1, 131072), "vocab_size": (1, 1048576),
                              "corpus": (1, 10000000)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("dim", "n_layers", "n_heads", "max_len", "corpus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class ContrastiveConfig:
    """Defaults match configs/encoder.toml."""

    dataset: WorldName = "shapes"
    manifest: str = ""             # dataset = "manifest": its JSONL manifest (as data.manifest)
    vit: ViTConfig = field(default_factory=ViTConfig)
    text: TextTowerConfig = field(default_factory=TextTowerConfig)
    steps: int = 600
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 30
    minutes: float = 0.0           # wall-clock budget, 0 = none
    temperature: float = 0.07      # initial softmax temperature (learned)
    val_scenes: int = 256          # held-out val scenes for retrieval
    eval_every: int = 200
    autocast: Literal["bf16", "none"] = "bf16"
    threads: int = 0               # torch threads; 0 leaves the default
    seed: int = 0

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (0, 100000000), "batch_size": (1, 1048576),
                              "warmup_steps": (0, 100000000), "val_scenes": (1, 1000000),
                              "eval_every": (1, 100000000), "threads": (0, 1024)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("steps", "batch_size", "eval_every", "val_scenes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError("batch_size must be >= 2 (contrastive pairs need negatives)")
        if self.lr <= 0 or not 0 < self.temperature < 1:
            raise ValueError(f"lr must be > 0 and temperature in (0, 1), got {self.lr}, "
                             f"{self.temperature}")
        if self.minutes < 0:
            raise ValueError(f"minutes must be >= 0, got {self.minutes}")


# ---------------------------------------------------------------------------------------------
# data: (image, caption, key) triples

class Pairs:
    """Index-addressable (image, caption, key) pairs of one split of a world (World.pairs);
    `key` says which pairs count as the same content (retrieval hits, extra positives)."""

    def __init__(self, world: World, split: str):
        self.pair = world.pairs(split)
        self.size = world.split_size(split)

    def __call__(self, i: int) -> tuple[np.ndarray, str, object]:
        return self.pair(i)

    def batch(self, start: int, n: int) -> tuple[np.ndarray, list[str], list]:
        items = [self(i) for i in range(start, start + n)]
        return np.stack([x[0] for x in items]), [x[1] for x in items], [x[2] for x in items]


def same_key(keys: list) -> Tensor:
    """(B, B) bool: pairs i and j show the same content."""
    ids = {k: n for n, k in enumerate(dict.fromkeys(keys))}
    idx = torch.tensor([ids[k] for k in keys])
    return idx[:, None] == idx[None, :]


# ---------------------------------------------------------------------------------------------
# model

class TextTower(nn.Module):
    def __init__(self, cfg: TextTowerConfig, vocab_size: int, embed_dim: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab_size + 1, cfg.dim)   # last id = padding
        nn.init.normal_(self.embed.weight, std=0.02)
        self.backbone = Backbone(BackboneConfig(dim=cfg.dim, n_layers=cfg.n_layers,
                                                n_heads=cfg.n_heads, max_seq_len=cfg.max_len))
        self.proj = nn.Linear(cfg.dim, embed_dim, bias=False)

    def forward(self, ids: Tensor, valid: Tensor) -> Tensor:
        """(B, T) token ids, (B, T) bool real tokens -> (B, C) pooled embedding."""
        B, T = ids.shape
        t = torch.arange(T, device=ids.device)
        pos = t[None, :, None].expand(B, T, 3)                              # 1-D RoPE
        eye = torch.eye(T, dtype=torch.bool, device=ids.device)
        mask = (valid[:, None, :] | eye)[:, None]                           # (B, 1, T, T)
        h = self.backbone(self.embed(ids), pos, mask)                       # (B, T, D)
        w = valid[..., None].to(h.dtype)
        return self.proj((h * w).sum(1) / w.sum(1).clamp_min(1.0))


class CLIP(nn.Module):
    """The two towers and the learned temperature."""

    def __init__(self, cfg: ContrastiveConfig, vocab_size: int):
        super().__init__()
        self.image = ViT(cfg.vit)
        self.text = TextTower(cfg.text, vocab_size, cfg.vit.embed_dim)
        self.pad = vocab_size
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def tokens(self, tok: TextTokenizer, texts: list[str], device=None) -> tuple[Tensor, Tensor]:
        seqs = [tok.encode(s)[: self.text.cfg.max_len] for s in texts]
        T = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), T), self.pad, dtype=torch.long)
        for b, s in enumerate(seqs):
            ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        return ids.to(device), (ids != self.pad).to(device)

    def embed_images(self, images: Tensor) -> Tensor:
        return F.normalize(self.image.pool(self.image(images)).float(), dim=-1)   # (B, C)

    def embed_texts(self, ids: Tensor, valid: Tensor) -> Tensor:
        return F.normalize(self.text(ids, valid).float(), dim=-1)                 # (B, C)

    def loss(self, img: Tensor, txt: Tensor, same: Tensor) -> Tensor:
        """Symmetric InfoNCE; every pair with the same key is a positive."""
        logits = self.log_scale.clamp(max=math.log(100.0)).exp() * img @ txt.T     # (B, B)
        target = same.float() / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target.T))


# ---------------------------------------------------------------------------------------------
# evaluation

def retrieval(img: Tensor, txt: Tensor, same: Tensor) -> dict[str, float]:
    """Top-1 / top-5 retrieval accuracy both ways over n pairs (hit = same key)."""
    sim = img @ txt.T                                                      # (n, n)
    out = {}
    for name, s, hit in (("image_to_text", sim, same), ("text_to_image", sim.T, same.T)):
        for k in (1, 5):
            top = s.topk(min(k, s.shape[1]), dim=1).indices                # (n, k)
            out[f"{name}_top{k}"] = hit.gather(1, top).any(1).float().mean().item()
    out["chance_top1"] = same.float().mean().item()
    return out


@torch.no_grad()
def evaluate(model: CLIP, tok: TextTokenizer, images: np.ndarray, texts: list[str],
             keys: list, amp: bool) -> dict[str, float]:
    model.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        img = model.embed_images(torch.from_numpy(images))
        txt = model.embed_texts(*model.tokens(tok, texts))
    model.train()
    return retrieval(img, txt, same_key(keys))


# ---------------------------------------------------------------------------------------------
# training

def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose another "
                              f"output folder or remove it")


def _text_tokenizer(cfg: ContrastiveConfig, train: Pairs) -> TextTokenizer:
    texts = [train(10 ** 8 + i)[1] for i in range(cfg.text.corpus)]
    return TextTokenizer.train(texts, cfg.text.vocab_size)


def train_encoder(cfg: ContrastiveConfig, out_dir, minutes: float | None = None,
                  progress: bool = True) -> dict:
    """Train the encoder contrastively, measure val retrieval, save into out_dir (a new or
    empty folder, written atomically); return the metrics (also in out_dir/metrics.json)."""
    out = Path(out_dir)
    _check_out(out)
    minutes = cfg.minutes if minutes is None else minutes
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = make_world(DataConfig(dataset=cfg.dataset, manifest=cfg.manifest,
                                  world=WorldConfig(image_size=cfg.vit.image_size)))
    train, val = Pairs(world, "train"), Pairs(world, "val")
    tok = _text_tokenizer(cfg, train)
    model = CLIP(cfg, tok.vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    amp = cfg.autocast == "bf16"
    n_val = cfg.val_scenes if val.size is None else min(cfg.val_scenes, val.size)
    val_imgs, val_txt, val_keys = val.batch(0, n_val)

    history = []
    budget = Budget(minutes or 0.0)
    bar = progress_bar(cfg.steps, f"encoder {cfg.dataset}", progress)
    step = 0
    for step in range(cfg.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg.lr, cfg.warmup_steps, cfg.steps)
        images, texts, keys = train.batch(step * cfg.batch_size, cfg.batch_size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            img = model.embed_images(torch.from_numpy(images))              # (B, C)
            txt = model.embed_texts(*model.tokens(tok, texts))              # (B, C)
            loss = model.loss(img, txt, same_key(keys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", T=f"{model.log_scale.exp().item():.0f}",
                            refresh=False)
        last = step + 1 == cfg.steps or budget.spent()
        if (step + 1) % cfg.eval_every == 0 or last:
            ev = evaluate(model, tok, val_imgs, val_txt, val_keys, amp)
            ev.update(step=step + 1, loss=round(loss.item(), 4),
                      seconds=round(budget.elapsed, 1))
            history.append(ev)
            bar.write(f"step {step + 1}: loss {loss.item():.3f} val i->t top1 "
                      f"{ev['image_to_text_top1']:.3f} top5 {ev['image_to_text_top5']:.3f} "
                      f"t->i top1 {ev['text_to_image_top1']:.3f} top5 "
                      f"{ev['text_to_image_top5']:.3f} (chance {ev['chance_top1']:.3f})",
                      file=sys.stderr)
        bar.update(1)
        if last:
            break
    bar.close()
    train_s = budget.elapsed
    metrics = {
        "val": history[-1], "val_scenes": n_val, "steps": step + 1,
        "train_seconds": round(train_s, 1), "steps_per_second": round((step + 1) / train_s, 2),
        "pairs_seen": (step + 1) * cfg.batch_size,
        "parameters": {"image": sum(p.numel() for p in model.image.parameters()),
                       "text": sum(p.numel() for p in model.text.parameters())},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "loadavg": [round(x, 2) for x in os.getloadavg()]},
        "history": history, "config": to_dict(cfg),
    }
    save_encoder(model, tok, cfg, metrics, out)
    return metrics


def save_encoder(model: CLIP, tok: TextTokenizer, cfg: ContrastiveConfig, metrics: dict,
                 out: Path) -> Path:
    """Write the folder under a temporary sibling name, then rename it into place."""
    _check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / ENCODER_WEIGHTS), metadata={"format": ENCODER_FORMAT})
        tok.save(tmp / "text")
        write_json(tmp / ENCODER_CONFIG, {
            "format": ENCODER_FORMAT, "version": ENCODER_VERSION, "vit": to_dict(cfg.vit),
            "text": to_dict(cfg.text), "text_vocab_size": tok.vocab_size,
            "val": metrics["val"], "tensors": {k: list(v.shape) for k, v in tensors.items()}})
        write_json(tmp / "metrics.json", metrics)
        os.chmod(tmp / ENCODER_WEIGHTS, 0o666 & ~_umask())     # as a plain open() would
        os.chmod(tmp, 0o777 & ~_umask())
        if out.exists():
            out.rmdir()                                  # empty (checked above)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m

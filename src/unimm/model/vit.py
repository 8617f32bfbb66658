"""A small ViT: the semantic image encoder of decoupled-encoder models (Janus's SigLIP role).

Images (B, H, W, 3) -> patch features (B, N, E) for a model to read, plus a pooled embedding
(B, C) for contrastive (CLIP-style) pre-training (unimm.train.contrastive).

Notable choices:
- The transformer *is* the shared Backbone (model/backbone.py: pre-norm RMSNorm, SwiGLU,
  M-RoPE, final norm) run with an all-True mask, i.e. bidirectional attention: one copy of each
  block in the codebase, no second attention implementation.
- Positions: learned absolute patch embeddings (a ViT needs *absolute* position: all-black
  background patches are identical, and captions name absolute cells such as "top left") plus
  the backbone's M-RoPE with (raster index, row, col) coordinates for relative 2-D structure.
- One patch = one code of the image tokenizer: with 32x32 images and 4x4 patches the ViT gives
  8x8 = 64 features, exactly the tokenizer's grid, so a feature replaces a code embedding
  one for one (paradigms/decoupled.py).
- Pixels: uint8 in [0, 255] or float in [0, 1], mapped to [-1, 1]. Pooling: mean over
  patches, then a linear projection (no CLS token: nothing to gain at 64 patches).
- Saved encoders (train/contrastive.py writes them) are a folder with `encoder.safetensors`
  (the image tower under `image.`, the text tower under `text.`) and `encoder.json`
  (format tag, the ViT config, tensor shapes); `read_encoder` checks both with clear errors.

Einops legend: B images, H W pixels, h w patch grid, p q patch size, N = h w patches,
E width, C contrastive embedding width.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from einops import rearrange
from torch import Tensor, nn

from ..utils.config import ConfigError, check_limits, from_dict
from ..utils.io import read_json
from .backbone import Backbone, BackboneConfig

ENCODER_FORMAT = "unimm.encoder"
ENCODER_VERSION = 1
ENCODER_WEIGHTS = "encoder.safetensors"
ENCODER_CONFIG = "encoder.json"


class EncoderFileError(ValueError):
    """A saved encoder folder is missing, corrupt, or does not match what is asked of it."""


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 32
    patch_size: int = 4
    dim: int = 96
    n_layers: int = 3
    n_heads: int = 4
    embed_dim: int = 96            # pooled (contrastive) embedding width

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"image_size": (1, 4096), "patch_size": (1, 4096),
                              "dim": (1, 16384), "n_layers": (1, 512), "n_heads": (1, 1024),
                              "embed_dim": (1, 16384)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("image_size", "patch_size", "dim", "n_layers", "n_heads", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size={self.image_size} must be a multiple of "
                             f"patch_size={self.patch_size}")
        self.backbone()                # dim / heads / rotary constraints, with their messages

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def backbone(self) -> BackboneConfig:
        return BackboneConfig(dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
                              max_seq_len=self.n_patches)


class ViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.patch_size
        self.patch = nn.Linear(3 * p * p, cfg.dim)
        self.pos = nn.Parameter(torch.randn(cfg.n_patches, cfg.dim) * 0.02)  # (N, E)
        self.backbone = Backbone(cfg.backbone())
        self.proj = nn.Linear(cfg.dim, cfg.embed_dim, bias=False)
        h, w = cfg.grid
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        coords = torch.stack([torch.arange(h * w), r.flatten(), c.flatten()], -1)  # (N, 3)
        self.register_buffer("coords", coords, persistent=False)

    def _pixels(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) uint8 [0, 255] or float [0, 1] -> float [-1, 1]."""
        s = self.cfg.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (s, s, 3):
            raise ValueError(f"the encoder reads (batch, {s}, {s}, 3) images, "
                             f"got {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            return images.float() / 127.5 - 1.0
        if not images.is_floating_point():
            raise ValueError(f"images must be uint8 or float, got {images.dtype}")
        return images.float() * 2.0 - 1.0

    def forward(self, images: Tensor) -> Tensor:
        """(B, H, W, 3) images -> (B, N, E) patch features (after the final norm)."""
        x = rearrange(self._pixels(images), "b (h p) (w q) c -> b (h w) (p q c)",
                      p=self.cfg.patch_size, q=self.cfg.patch_size)     # (B, N, 3 p q)
        x = self.patch(x) + self.pos                                    # (B, N, E)
        B, N = x.shape[:2]
        pos = self.coords.expand(B, N, 3)
        every = torch.ones(1, 1, N, N, dtype=torch.bool, device=x.device)  # bidirectional
        return self.backbone(x, pos, every)

    def pool(self, feats: Tensor) -> Tensor:
        """(B, N, E) patch features -> (B, C) pooled embedding (not normalised)."""
        return self.proj(feats.mean(1))


def read_encoder(path, want: ViTConfig | None = None) -> tuple[ViTConfig, dict[str, Tensor]]:
    """Read a saved encoder folder -> (its ViT config, the image tower's state dict). With
    `want`, the folder's ViT must have exactly that shape."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    d = Path(path)
    cfg_path, w_path = d / ENCODER_CONFIG, d / ENCODER_WEIGHTS
    if not cfg_path.is_file() or not w_path.is_file():
        raise EncoderFileError(f"{d} is not a saved encoder: it needs {ENCODER_CONFIG} and "
                               f"{ENCODER_WEIGHTS} (train one with `unimm train-encoder`)")
    try:
        meta = read_json(cfg_path)
    except ValueError as e:
        raise EncoderFileError(f"{cfg_path} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != ENCODER_FORMAT:
        raise EncoderFileError(f"{cfg_path} is not an encoder file (format tag "
                               f"{meta.get('format') if isinstance(meta, dict) else None!r}, "
                               f"expected {ENCODER_FORMAT!r})")
    if meta.get("version") != ENCODER_VERSION:
        raise EncoderFileError(f"{cfg_path}: format version {meta.get('version')!r}; this "
                               f"library reads version {ENCODER_VERSION}")
    try:
        cfg = from_dict(ViTConfig, meta.get("vit", {}), "vit")
    except ConfigError as e:
        raise EncoderFileError(f"{cfg_path}: bad ViT config ({e})") from None
    if want is not None and cfg != want:
        diff = [f"{k}: folder {getattr(cfg, k)} vs config {getattr(want, k)}"
                for k in ViTConfig.__dataclass_fields__ if getattr(cfg, k) != getattr(want, k)]
        raise EncoderFileError(f"the encoder in {d} does not match the configured one ("
                               + "; ".join(diff) + "); set the encoder dims to the folder's")
    try:
        sd = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise EncoderFileError(f"{w_path} is not a readable safetensors file ({e})") from None
    image = {k[len("image."):]: v for k, v in sd.items() if k.startswith("image.")}
    own = ViT(cfg).state_dict()
    bad = sorted(set(own) ^ set(image)) + [k for k in own if k in image
                                           and own[k].shape != image[k].shape]
    if bad:
        raise EncoderFileError(f"{w_path}: the image tower's tensors do not match its "
                               f"config ({', '.join(bad[:5])})")
    return cfg, image

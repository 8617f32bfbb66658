"""Decoupled encoders (Janus / Janus-Pro, arXiv:2410.13848): a semantic encoder reads input
images, the VQ codes stay for generation.

The model *reads* an input image (understanding, and the source of an edit) through a small ViT
(model/vit.py) and an MLP aligner to the model width, and *writes* images as VQ codes with the
autoregressive head, exactly as the `ar` paradigm does. Everything else (loss, condition
dropout, batched CFG image sampling, KV-cached text decoding) is inherited from Autoregressive:
it all goes through `self.hidden` -> `embed` below.

Notable choices:
- The sequence layout is unchanged (sequence.py): the input image span still holds its N codes,
  so positions, masks and the tokenizer grid stay those of every other paradigm; `embed` only
  swaps the *input embeddings* of that span for `aligner(vit(pixels))` (one patch feature per
  code: the ViT's patch grid equals the tokenizer's grid). The target span of generation /
  editing keeps its code embeddings: it is what the head predicts, and at sampling time each new
  code is fed back as a code.
- The input span is found from the tokens: a row's first N image codes, in rows whose turn has
  an input image (`has_image`). Rows without one (text-to-image) are untouched.
- Encoder and aligner live in `model.extras` ("encoder", "aligner"), so they are saved, loaded,
  EMA-averaged and warm-started with the model. `encoder_path` initialises the ViT from a
  contrastively trained folder (unimm train-encoder); `freeze_encoder` keeps it fixed (Janus
  stage 1 freezes SigLIP and trains the adaptors).
- The classifier-free-guidance twin of an edit keeps its source image (`drop_condition` keeps
  `pixels`), so guidance contrasts with and without the instruction, as for `ar`.
- Aligner: `aligner_depth` linear layers with GELU between (Janus's MLP projector: two),
  from the encoder width to the model width.
- `encoder_path` is read by the trainer only, when a fresh run starts (`init_pretrained`); a
  saved run carries the encoder in its own weights, so reloading it never needs that folder.

Einops legend: B rows, T tokens, N codes (= patches) per image, E encoder width, D model width.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ..model.unified import TokenModel
from ..model.vit import ViT, ViTConfig, read_encoder
from ..utils.config import check_limits
from .ar import ARConfig, Autoregressive
from .base import Turn
from .sequence import Vocab


@dataclass(frozen=True)
class DecoupledConfig:
    ar: ARConfig = field(default_factory=ARConfig)      # condition dropout, loss reduction
    encoder: ViTConfig = field(default_factory=ViTConfig)
    encoder_path: str = ""          # a `unimm train-encoder` folder; "" = random init
    freeze_encoder: bool = False
    aligner_depth: int = 2
    # Weight of an alignment loss: the aligned encoder features of an input image regress onto
    # the token embeddings of its codes (held fixed), relative MSE. A warm start from an `ar`
    # run thereby learns to hand its backbone inputs like those it already reads, instead of
    # rediscovering them through the answers alone. 0 = off (Janus trains the adaptor on the
    # task losses only).
    align_weight: float = 0.0

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"aligner_depth": (0, 64)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if self.aligner_depth < 1:
            raise ValueError(f"aligner_depth must be >= 1, got {self.aligner_depth}")
        if self.align_weight < 0:
            raise ValueError(f"align_weight must be >= 0, got {self.align_weight}")


def aligner(d_in: int, d_out: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(depth):
        layers.append(nn.Linear(d_in if k == 0 else d_out, d_out))
        if k < depth - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class Decoupled(Autoregressive):
    name = "decoupled"

    def __init__(self, vocab: Vocab, cfg: DecoupledConfig | None = None):
        self.dcfg = cfg or DecoupledConfig()
        super().__init__(vocab, self.dcfg.ar)
        # the input images' side in pixels; a released checkpoint's encoder sets its own
        # (runs/families: Janus's SigLIP reads 384 x 384)
        self.input_size = self.dcfg.encoder.image_size

    # ---- construction -------------------------------------------------------------------------
    def attach(self, model: TokenModel, image_tok) -> None:
        c = self.dcfg
        if tuple(c.encoder.grid) != tuple(self.vocab.grid):
            raise ValueError(f"decoupled.encoder reads a {c.encoder.grid} patch grid but the "
                             f"image tokenizer has a {self.vocab.grid} code grid; set "
                             f"decoupled.encoder.patch_size / image_size so they match")
        if image_tok is not None and image_tok.image_size != c.encoder.image_size:
            raise ValueError(f"decoupled.encoder.image_size={c.encoder.image_size} but the "
                             f"image tokenizer reads {image_tok.image_size}px images")
        vit = ViT(c.encoder)
        if c.freeze_encoder:
            vit.requires_grad_(False)
        model.extras["encoder"] = vit
        model.extras["aligner"] = aligner(c.encoder.dim, model.cfg.dim, c.aligner_depth)

    def init_pretrained(self, model: TokenModel) -> None:
        """A fresh run starts its encoder from `encoder_path` (a saved run carries the encoder
        in its own weights, so reloading it never needs that folder again)."""
        if self.dcfg.encoder_path:
            _, state = read_encoder(self.dcfg.encoder_path, want=self.dcfg.encoder)
            model.extras["encoder"].load_state_dict(state)

    def extras_for(self, turns: list[Turn]) -> dict:
        """pixels (B, H, W, 3) uint8 (zeros where a turn has no input image), has_image (B,)."""
        s = self.input_size
        pixels = np.zeros((len(turns), s, s, 3), np.uint8)
        has = torch.zeros(len(turns), dtype=torch.bool)
        for b, t in enumerate(turns):
            if t.image is None:
                continue
            if t.pixels is None:
                raise ValueError("the decoupled paradigm reads input images with its encoder: "
                                 "a turn with an input image needs its pixels (Turn.pixels)")
            px = np.asarray(t.pixels)
            if px.shape != (s, s, 3):
                raise ValueError(f"input image pixels must be ({s}, {s}, 3), got {px.shape}")
            pixels[b], has[b] = px, True
        return {"pixels": torch.from_numpy(pixels), "has_image": has}

    # ---- the one thing that differs from `ar` -------------------------------------------------
    def input_span(self, tokens: Tensor, has_image: Tensor) -> Tensor:
        """(B, T) bool: the input image's positions in rows with an input image: the first N
        codes, or (a vocabulary with an image placeholder, as Janus's) the placeholders."""
        if self.vocab.has("<image>"):
            return (tokens == self.vocab.special("<image>")) & has_image[:, None]
        is_code = tokens >= self.vocab.code_start
        return is_code & (is_code.cumsum(1) <= self.vocab.n_image) & has_image[:, None]

    def features(self, model: TokenModel, pixels: Tensor) -> Tensor:
        """(b, H, W, 3) uint8 input images -> (b, N, D) aligned encoder features."""
        return model.extras["aligner"](model.extras["encoder"](pixels))

    def embed(self, model: TokenModel, tokens: Tensor, pos: Tensor, extra: dict) -> Tensor:
        x = model.embed_tokens(tokens, pos)                              # (B, T, D)
        has = extra.get("has_image") if extra else None
        if has is None or not bool(has.any()):
            return x
        span = self.input_span(tokens, has)                              # (B, T)
        n = span.sum(1)
        if bool((n[has] != self.vocab.n_image).any()):
            raise ValueError("a row flagged with an input image holds fewer than "
                             f"{self.vocab.n_image} image codes in its tokens")
        feats = extra.get("features")                                    # computed by loss
        if feats is None:
            feats = self.features(model, extra["pixels"][has])           # (b, N, D)
        # row-major: the b flagged rows' N span positions, in order
        return x.masked_scatter(span[..., None], feats.to(x.dtype))

    def loss(self, model: TokenModel, batch, generator=None):
        w = self.dcfg.align_weight
        has = batch.extra.get("has_image")
        if w == 0 or has is None or not bool(has.any()):
            return super().loss(model, batch, generator)
        feats = self.features(model, batch.extra["pixels"][has])        # (b, N, D)
        batch = replace(batch, extra={**batch.extra, "features": feats})
        loss, stats = super().loss(model, batch, generator)
        span = self.input_span(batch.tokens, has)                        # (B, T)
        with torch.no_grad():
            want = model.embed_tokens(batch.tokens, batch.pos)[span].float()   # (b N, D)
        got = feats.reshape(-1, feats.shape[-1]).float()
        align = (got - want).pow(2).mean() / want.pow(2).mean().clamp_min(1e-12)
        return loss + w * align, {**stats, "loss/align": align.item()}

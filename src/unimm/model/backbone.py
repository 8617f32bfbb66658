"""The shared backbone: a decoder-only transformer from embeddings + attention mask to hidden
states. It knows no paradigm: token embeddings, image patch projections, heads, losses, mask
and noise schedules and samplers all live with the paradigms (see unimm.paradigms).

Notable choices:
- Llama-style blocks (pre-norm RMSNorm, SwiGLU, no biases), fused QKV and gate+up projections,
  grouped-query attention, optional QK-norm; see layers.py.
- M-RoPE positions (seq, row, col) per token, so image tokens can carry 2-D positions while
  text reduces to 1-D RoPE; see rotary.py.
- Masks are boolean "may attend" tensors built by the caller (masks.py); None means causal.
- A preallocated KV cache written at an explicit `start`, so prefixes are computed once and
  later spans can be rewritten (cache.py).
- GPT-2 init: N(0, 0.02) for every linear, N(0, 0.02 / sqrt(2 * n_layers)) for the residual
  output projections (attention `proj`, MLP `down`), so the residual stream's variance does not
  grow with depth.
- `mlp_hidden` defaults to 8/3 * dim rounded up to a multiple of 32 (Llama's parameter-matched
  SwiGLU width; 32 keeps bf16 rows a multiple of 64 bytes): dim 64 -> 192, 256 -> 704.

- Two seams for the speed paths of unimm.fast (None here: the plain model): `filler`, a
  compiled prompt fill that `forward` hands prompt fills to, and `pool`, the memory the
  samplers' caches reuse (`new_cache(reuse=True)`; made by `ops.new_pool`). Speed figures:
  docs/fast.md.

Letters: b batch, t query tokens, s key tokens (start + t with a cache), d model dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from unimm.model import ops
from unimm.model.cache import KVCache
from unimm.model.layers import Block, RMSNorm, autocast_dtype
from unimm.model.masks import causal_mask
from unimm.model.rotary import Rotary, default_sections

from ..utils.config import check_limits


MAX_BLOCK_PARAMS = 1e11        # a 70B-class stack; larger configs are typos, not models

# A prompt fill from another implementation (`Backbone.filler`): (x, pos, mask, cache) -> the
# last hidden state, the cache written as `Backbone.forward` writes it; None where it does not
# apply (then `forward` fills).
Filler = Callable[[Tensor, Tensor, "Tensor | None", KVCache], "Tensor | None"]


def _default_mlp_hidden(dim: int) -> int:
    return 32 * math.ceil(8 * dim / 3 / 32)


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone shape. `None` fields are resolved in `__post_init__` (the resolved values are
    what `to_dict` saves, so a saved config reloads exactly)."""

    dim: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None  # grouped-query attention; None = n_heads (plain MHA)
    mlp_hidden: int | None = None  # SwiGLU width; None = 8/3 dim rounded up to 32
    max_seq_len: int = 1024  # rotary table size: every position coordinate must be below it
    rope_theta: float = 10000.0
    # pairs per axis (seq, row, col), three ints; None = (p - 2 (p // 4), p // 4, p // 4)
    rope_sections: tuple[int, ...] | None = None
    rope_layout: Literal["interleaved", "contiguous"] = "interleaved"
    norm_eps: float = 1e-5
    dropout: float = 0.0
    qk_norm: bool = False

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"dim": (1, 16384), "n_layers": (1, 512), "n_heads": (1, 1024),
                              "n_kv_heads": (1, 1024), "mlp_hidden": (1, 131072),
                              "max_seq_len": (1, 131072)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        for name in ("dim", "n_layers", "n_heads", "max_seq_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim={self.dim} must be divisible by n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = dim / n_heads = {self.head_dim} must be even "
                             f"(rotary rotates pairs)")
        if self.n_kv_heads is None:
            object.__setattr__(self, "n_kv_heads", self.n_heads)
        if self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} must be a multiple of "
                             f"n_kv_heads={self.n_kv_heads}")
        if self.mlp_hidden is None:
            object.__setattr__(self, "mlp_hidden", _default_mlp_hidden(self.dim))
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_hidden must be >= 1, got {self.mlp_hidden}")
        pairs = self.head_dim // 2
        if self.rope_sections is None:
            object.__setattr__(self, "rope_sections", default_sections(self.head_dim))
        sections = tuple(self.rope_sections)
        if len(sections) != 3 or any(s < 0 for s in sections) or sum(sections) != pairs:
            raise ValueError(f"rope_sections={sections} must be three non-negative pair counts "
                             f"(seq, row, col) summing to head_dim // 2 = {pairs}, "
                             f"e.g. {default_sections(self.head_dim)}")
        object.__setattr__(self, "rope_sections", sections)
        if self.rope_layout not in ("interleaved", "contiguous"):
            raise ValueError(f"rope_layout={self.rope_layout!r} must be 'interleaved' "
                             f"or 'contiguous'")
        n = self.n_layers * self.dim * (2 * self.dim + 2 * self.n_kv_heads * self.head_dim
                                        + 3 * self.mlp_hidden)
        if n > MAX_BLOCK_PARAMS:
            raise ValueError(f"this shape has {n:.3g} parameters in its blocks; at most "
                             f"{MAX_BLOCK_PARAMS:.0e} are accepted (dim, n_layers, mlp_hidden)")
        if self.rope_theta <= 0 or self.norm_eps <= 0:
            raise ValueError("rope_theta and norm_eps must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.rotary = Rotary(cfg.head_dim, cfg.max_seq_len, cfg.rope_theta, cfg.rope_sections,
                             cfg.rope_layout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.apply(self._init_weights)
        # seams (module notes): a compiled prompt fill (unimm.fast.compile_decode sets it) and
        # the memory pool of the samplers' caches (`new_cache(reuse=True)`)
        self.filler: Filler | None = None
        self.pool = None

    def _init_weights(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            std = 0.02
            if getattr(m, "is_residual_proj", False):
                std /= math.sqrt(2 * self.cfg.n_layers)  # GPT-2 sec. 2.3
            nn.init.normal_(m.weight, mean=0.0, std=std)

    def forward(self, x: Tensor, pos: Tensor, mask: Tensor | None = None,
                cache: KVCache | None = None, start: int = 0, last: bool = False) -> Tensor:
        """Hidden states (b, t, d) of the t input embeddings, after the final RMSNorm.

        x:     (b, t, d) input embeddings.
        pos:   Long (b, t, 3) positions (seq, row, col); see rotary.py for the convention.
        mask:  Bool "may attend", True = attend. Shape (b, t, s), (b, 1, t, s) or (t, s)
               (a leading 1 broadcasts over the batch), with s = start + t when a cache is
               given and s = t otherwise. Query i is the token at absolute index s - t + i;
               key j is absolute index j (keys [0, start) come from the cache). None = causal
               (query at index q sees keys [0, q]). A query row that is entirely False gives
               an unspecified (zero or NaN) output; masks.py builders always keep the diagonal.
        cache: optional KVCache; keys/values of the t tokens are written in place at slots
               [start, start + t) (overwriting what was there) and attention reads [0, s).
               `cache.length` becomes start + t.
        start: write index in the cache; must be 0 without a cache.
        last:  return the last token's hidden state only, (b, 1, d): the last block then
               computes its attention output and MLP for that token alone (its keys/values
               still cover all t and are written to the cache). What a prompt fill before
               decoding needs: ~1/8 fewer FLOPs at 6 layers, the same values.
        """
        b, t, d = x.shape
        self._check_inputs(x, pos, cache, start)
        s = start + t
        attn_mask, is_causal = self._attn_mask(mask, b, t, s, x.device)
        if (self.filler is not None and cache is not None and start == 0 and last and t > 1
                and not self.training and not torch.is_grad_enabled()):   # a prompt fill
            self.rotary.check(pos)
            h = self.filler(x, pos, attn_mask, cache)
            if h is not None:
                return h
        rope = self.rotary(pos)  # cos, sin: (b, 1, t, p), shared by all layers
        n = len(self.blocks)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, attn_mask, is_causal, cache, layer, start, last and layer == n - 1)
        if cache is not None:
            cache.length = s
        return self.norm(x)

    def _check_inputs(self, x: Tensor, pos: Tensor, cache: KVCache | None, start: int) -> None:
        if x.dim() != 3 or x.shape[-1] != self.cfg.dim:
            raise ValueError(f"x must be (batch, tokens, {self.cfg.dim}), got {tuple(x.shape)}")
        if pos.shape != (*x.shape[:2], 3) or pos.dtype != torch.long:
            raise ValueError(f"pos must be a Long tensor (batch, tokens, 3) = "
                             f"{(*x.shape[:2], 3)}, got {pos.dtype} {tuple(pos.shape)}")
        if cache is None:
            if start != 0:
                raise ValueError(f"start={start} needs a cache (start is the cache write index)")
        else:
            cache.check(x.shape[0], start, x.shape[1])

    @staticmethod
    def _attn_mask(mask: Tensor | None, b: int, t: int, s: int,
                   device: torch.device) -> tuple[Tensor | None, bool]:
        """Mask for SDPA: Bool (b|1, 1, t, s) or None, and whether SDPA's is_causal applies."""
        if mask is None:
            if t == s:
                return None, True  # SDPA's own (top-left aligned) causal path
            if t == 1:
                return None, False  # one new token attends to everything before it
            return causal_mask(t, s, device=device)[None, None], False  # (1, 1, t, s)
        if mask.dtype != torch.bool:
            raise ValueError(f"mask must be boolean (True = may attend), got {mask.dtype}")
        if mask.dim() == 2:
            mask = mask[None, None]
        elif mask.dim() == 3:
            mask = mask[:, None]
        ok = mask.dim() == 4 and mask.shape[1] == 1 and mask.shape[0] in (1, b) \
            and tuple(mask.shape[2:]) == (t, s)
        if not ok:
            raise ValueError(f"mask must have shape (b, t, s), (b, 1, t, s) or (t, s) with "
                             f"b={b}, t={t}, s={s}, got {tuple(mask.shape)}")
        return mask, False

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def new_cache(self, batch: int, max_len: int | None = None, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None, reuse: bool = False) -> KVCache:
        """Empty cache for `batch` rows and `max_len` slots (default max_seq_len), in `dtype`,
        by default the weights' dtype, or autocast's lower precision when it is on for the
        device (its keys and values are computed in that precision, so storing them so loses
        nothing and halves the cache's memory and the bytes each decoding step reads). `reuse`
        (CPU only; the samplers' caches): its memory comes from this backbone's pool and goes
        back there once the cache is garbage-collected (see `KVCache.empty`), so the caller
        keeps no view of its k, v beyond it. Without a pool factory (`ops.new_pool`, which
        unimm.fast installs) every cache is plain zeroed memory."""
        cfg = self.cfg
        dev = torch.device(device) if device is not None else self.device
        pool = None
        if reuse and dev.type == "cpu":
            if self.pool is None and ops.new_pool is not None:
                self.pool = ops.new_pool()
            pool = self.pool
        if dtype is None:
            dtype = self.norm.weight.dtype
            if dtype == torch.float32:
                dtype = autocast_dtype(dev.type) or dtype
        return KVCache.empty(cfg.n_layers, batch, cfg.n_kv_heads, max_len or cfg.max_seq_len,
                             cfg.head_dim, dtype, dev, pool=pool)

    def num_params(self) -> int:
        """Parameters of the backbone (all are non-embedding: it has no embeddings)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs (forward + backward) per token: 6 N + 12 L d T.

        6 N counts the matmuls of the N parameters (2 per multiply-add, x3 for backward);
        12 L d T the attention scores and weighted sum at context T (PaLM appendix B,
        nanoGPT `estimate_mfu`). T defaults to max_seq_len and is counted in full even for
        causal attention (the usual convention, so MFU numbers compare across papers).
        MFU = flops_per_token * tokens_per_second / peak_flops."""
        t = seq_len or self.cfg.max_seq_len
        return 6 * self.num_params() + 12 * self.cfg.n_layers * self.cfg.dim * t

"""Transformer blocks of the backbone: RMSNorm, attention, SwiGLU MLP, pre-norm block.

The one copy of each block in unimm; paradigm heads import `RMSNorm` from here.

Notable choices:
- No biases anywhere (Llama / PaLM); fused projections (one QKV matmul, one gate+up matmul).
- Attention is `F.scaled_dot_product_attention` with a boolean "may attend" mask; grouped-query
  attention goes through SDPA's `enable_gqa` (no key/value copies).
- RMSNorm normalises in float32 and casts back, so bf16 autocast keeps a float32 residual stream
  while the matmuls run in bf16.
- Optional QK-norm (RMSNorm over each head's queries and keys before rotary; OLMo 2, Qwen3)
  for stability at high learning rates.
- The projections and the attention run through the ops table (ops.py: `ops.linear`,
  `ops.swiglu`, `ops.attention`), plain PyTorch unless unimm.fast installed its CPU paths; the
  residual additions are handed to the projection before them (`residual`), so such a path can
  fuse them into its GEMM. The compiled decoding steps (unimm.fast) reuse `Attention.heads`,
  `Attention.out` and `SwiGLU` rather than writing the block's math again.

Letters: b batch, t query tokens, s key tokens, d model dim, h query heads, g kv heads,
e head dim, f MLP hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimm.model import ops
from unimm.model.cache import KVCache
from unimm.model.rotary import apply_rotary

if TYPE_CHECKING:
    from unimm.model.backbone import BackboneConfig


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The lower precision autocast is running matmuls in on this device type ("cpu",
    "cuda"), or None when it is off there."""
    try:
        on, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):   # torch < 2.4
        if device_type == "cpu":
            on, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            on, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return dtype if on else None


class RMSNorm(nn.Module):
    """RMSNorm (Zhang & Sennrich 2019) with a learned gain, computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:   # no casts to pay:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)  # one op, same formula
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.dropout = cfg.dropout
        self.qkv = nn.Linear(cfg.dim, (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim,
                             bias=False)
        self.proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)
        self.proj.is_residual_proj = True  # scaled init, see Backbone._init_weights
        self.qk_norm = cfg.qk_norm
        self.q_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(cfg.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                is_causal: bool, cache: KVCache | None, layer: int, start: int,
                last: bool = False, residual: Tensor | None = None) -> Tensor:
        """(b, t, d) -> (b, t, d), or (b, 1, d) for the last query alone (`last`: keys and
        values of all t tokens are still computed and cached); plus `residual` (of the
        output's shape) when given."""
        q, k, v = self.heads(x, rope)                # (b, h, t, e), (b, g, t, e) x 2
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (b, g, s, e), s = start + t
        if last and q.shape[2] > 1:  # the last query sees every key: causal needs no mask
            q = q[:, :, -1:]
            mask, is_causal = (None if mask is None else mask[..., -1:, :]), False
        p = self.dropout if self.training else 0.0
        return self.out(ops.attention(q, k, v, mask, is_causal, p), residual)

    def heads(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """Queries (b, h, t, e), keys and values (b, g, t, e) of x (b, t, d): the fused QKV
        projection, QK-norm and rotary."""
        b, t, _ = x.shape
        h, g, e = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = ops.linear(x, self.qkv.weight).view(b, t, h + 2 * g, e).transpose(1, 2)
        q, k, v = qkv.split([h, g, g], dim=1)        # qkv: (b, h+2g, t, e)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:   # one rotation for queries and keys together (fewer small ops when decoding)
            q, k = apply_rotary(qkv[:, :h + g], *rope).split([h, g], dim=1)
        return q, k, v

    def out(self, y: Tensor, residual: Tensor | None = None) -> Tensor:
        """The output projection of attention outputs y (b, h, t, e) -> (b, t, d), plus
        `residual` when given."""
        b, h, t, e = y.shape
        return ops.linear(y.transpose(1, 2).reshape(b, t, h * e), self.proj.weight, residual)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020, arXiv:2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.down.is_residual_proj = True

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """(b, t, d) -> (b, t, d), plus `residual` when given."""
        return ops.linear(ops.swiglu(x, self.gate_up.weight), self.down.weight, residual)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                is_causal: bool, cache: KVCache | None, layer: int, start: int,
                last: bool = False) -> Tensor:
        """(b, t, d) -> (b, t, d), or (b, 1, d) with `last` (see Attention.forward)."""
        skip = x[:, -1:] if last else x
        if self.drop.p and self.training:
            x = skip + self.drop(self.attn(self.attn_norm(x), rope, mask, is_causal, cache,
                                           layer, start, last))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        # without dropout each residual addition is handed to the projection before it, which
        # may fuse it (ops.linear's `add`)
        x = self.attn(self.attn_norm(x), rope, mask, is_causal, cache, layer, start, last,
                      residual=skip)
        return self.mlp(self.mlp_norm(x), residual=x)

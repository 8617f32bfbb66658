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
- Inside a block, submodules are run through `.forward` and linears through `F.linear` on
  their weights (no `nn.Module.__call__` per piece, no dropout call when dropout is 0): the
  same operations, but a one-token decoding step at the default size spends a large share of
  its time in per-call overhead on a CPU (measured: `unimm bench speed`, README). Hooks on
  these submodules (and on the blocks, which the backbone calls the same way) would therefore
  not fire; the backbone is the hook point (benches count its calls).

Letters: b batch, t query tokens, s key tokens, d model dim, h query heads, g kv heads,
e head dim, f MLP hidden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimm.model.cache import KVCache
from unimm.model.rotary import apply_rotary

if TYPE_CHECKING:
    from unimm.model.backbone import BackboneConfig

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


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


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
              dropout: float) -> Tensor:
    """q (b, h, t, e), k/v (b, g, s, e), mask Bool (b|1, 1, t, s) or None -> (b, h, t, e)."""
    k, v = k.to(q.dtype), v.to(q.dtype)  # a float32 cache under bf16 autocast
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad \
            and k.shape[2] <= EXPLICIT_MAX_KEYS:
        return explicit_attention(q, k, v, mask, is_causal, dropout)
    h, g = q.shape[1], k.shape[1]
    kwargs = {}
    if h != g:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # torch < 2.5
            k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=is_causal, **kwargs)


# bf16 training on a CPU: attention over at most this many keys runs as `explicit_attention`
EXPLICIT_MAX_KEYS = 256
# ... in batch chunks whose float32 scores take at most this many bytes (they stay in cache)
EXPLICIT_CHUNK_BYTES = 8 << 20


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                       dropout: float, chunk_bytes: int = EXPLICIT_CHUNK_BYTES) -> Tensor:
    """Attention as two matmuls and a float32 softmax, the same function as SDPA. Used for
    bf16 training on a CPU: there SDPA's fused CPU kernel took 3.4x longer forward + backward
    (20.9 vs 6.1 ms at b 11, h 6, t 112, e 32, 1 thread, torch 2.13). Over longer contexts the
    scores of a whole batch outgrow the caches (50 MB at b 32, h 6, t 256): computed for a few
    sequences at a time (`chunk_bytes` of float32 scores each), forward + backward took 104 vs
    114-121 ms for SDPA at that shape (e 32; 277 ms unchunked), 223 vs 266 ms at h 9, e 64
    (the ~50M peer shape), 54-58 vs 75 ms at t 192. A fully masked query row gets uniform
    weights (finite, unlike -inf), so it cannot put NaN into the gradients of the rows that
    count."""
    b, h, t, _ = q.shape
    per_row = h * t * k.shape[2] * 4
    c = max(1, chunk_bytes // per_row)
    if c >= b:
        return _explicit_attention(q, k, v, mask, is_causal, dropout)
    c = -(-b // -(-b // c))                          # equal chunks: 32 rows as 16 + 16, not 21 + 11
    split = mask is not None and mask.dim() == 4 and mask.shape[0] == b
    return torch.cat([_explicit_attention(q[i:i + c], k[i:i + c], v[i:i + c],
                                          mask[i:i + c] if split else mask, is_causal, dropout)
                      for i in range(0, b, c)])


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                        dropout: float) -> Tensor:
    b, h, t, e = q.shape
    g, s = k.shape[1], k.shape[2]
    qg = q.view(b, g, h // g, t, e)                           # query heads grouped by kv head
    scores = (qg @ k[:, :, None].transpose(-1, -2)).float() * e ** -0.5   # (b, g, h/g, t, s)
    if is_causal:
        mask = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
    if mask is not None:
        if mask.dim() == 4:                                   # (b|1, 1, t, s) -> (b|1, 1, 1, t, s)
            mask = mask[:, :, None]
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    w = scores.softmax(-1).to(v.dtype)
    if dropout:
        w = F.dropout(w, dropout)
    return (w @ v[:, :, None]).view(b, h, t, e)


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
                last: bool = False) -> Tensor:
        """(b, t, d) -> (b, t, d), or (b, 1, d) for the last query alone (`last`: keys and
        values of all t tokens are still computed and cached)."""
        b, t, _ = x.shape
        h, g, e = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = F.linear(x, self.qkv.weight).view(b, t, h + 2 * g, e).transpose(1, 2)  # (b, h+2g, t, e)
        q, k, v = qkv.split([h, g, g], dim=1)
        if self.qk_norm:
            q, k = self.q_norm.forward(q), self.k_norm.forward(k)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        else:   # one rotation for queries and keys together (fewer small ops when decoding)
            q, k = apply_rotary(qkv[:, :h + g], *rope).split([h, g], dim=1)
        if cache is not None:
            k, v = cache.update(layer, start, k, v)  # (b, g, s, e), s = start + t
        if last and t > 1:      # the last query sees every key: causal needs no mask for it
            q, t = q[:, :, -1:], 1
            mask, is_causal = (None if mask is None else mask[..., -1:, :]), False
        p = self.dropout if self.training else 0.0
        y = attention(q, k, v, mask, is_causal, p)  # (b, h, t, e)
        return F.linear(y.transpose(1, 2).reshape(b, t, h * e), self.proj.weight)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020, arXiv:2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.down.is_residual_proj = True

    def forward(self, x: Tensor) -> Tensor:
        gate, up = F.linear(x, self.gate_up.weight).chunk(2, dim=-1)  # (b, t, f) each
        return F.linear(F.silu(gate) * up, self.down.weight)


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
        a = self.attn.forward(self.attn_norm.forward(x), rope, mask, is_causal, cache, layer,
                              start, last)
        if last:
            x = x[:, -1:]
        x = x + (self.drop(a) if self.drop.p else a)
        m = self.mlp.forward(self.mlp_norm.forward(x))
        return x + (self.drop(m) if self.drop.p else m)

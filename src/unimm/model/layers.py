"""Transformer blocks of the backbone: RMSNorm, attention, SwiGLU MLP, pre-norm block.

The one copy of each block in unimm; paradigm heads import `RMSNorm` from here.

Notable choices:
- No biases anywhere (Llama / PaLM); fused projections (one QKV matmul, one gate+up matmul).
- Attention is `F.scaled_dot_product_attention` with a boolean "may attend" mask; grouped-query
  attention goes through SDPA's `enable_gqa` (no key/value copies). bf16 training on a CPU
  (up to BLOCKED_MAX_KEYS keys) runs `blocked_attention` instead: the same function, in
  cache-sized pieces, causal blocks reading only their keys, with a written-out backward
  (1.8x faster than SDPA at 256 keys; up to 1024 keys; under torch.compile it runs eagerly
  between the compiled graphs); with attention dropout, up to 256 keys, `explicit_attention`
  (two matmuls and a float32 softmax, autograd's backward).
- RMSNorm normalises in float32 and casts back, so bf16 autocast keeps a float32 residual stream
  while the matmuls run in bf16.
- Optional QK-norm (RMSNorm over each head's queries and keys before rotary; OLMo 2, Qwen3)
  for stability at high learning rates.
- Float32 inference on a CPU over 256+ rows runs the projections on weights packed once for
  oneDNN (`linear`; ~10 % faster GEMMs at prompt-fill sizes); everything else is F.linear.
- Inside a block, submodules are run through `.forward` and linears through `linear` on
  their weights (no `nn.Module.__call__` per piece, no dropout call when dropout is 0): the
  same operations, but a one-token decoding step at the default size spends a large share of
  its time in per-call overhead on a CPU (measured: `unimm bench speed`, README). Hooks on
  these submodules (and on the blocks, which the backbone calls the same way) would therefore
  not fire; the backbone is the hook point (benches count its calls).

Letters: b batch, t query tokens, s key tokens, d model dim, h query heads, g kv heads,
e head dim, f MLP hidden.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unimm.model.cache import KVCache
from unimm.model.rotary import apply_rotary

if TYPE_CHECKING:
    from unimm.model.backbone import BackboneConfig

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)

# float32 inference on a CPU over at least this many rows: oneDNN's GEMM on a copy of the
# weight packed once into its blocked layout (`linear`). Measured at the Janus-compatible
# default shapes (K 192-512, N 192-1024), 1 thread of the 2-core dev CPU: 106-113 GFLOP/s
# against 94-102 for F.linear (MKL) at 448-1296 rows; at 16 rows it was slower (55 vs 68).
PACKED_MIN_ROWS = 256
_packed: dict[tuple, tuple] = {}   # (id(weight), lo, hi) -> (weakref, (version, ptr), packed)
_packing = {"ok": torch.backends.mkldnn.is_available()}


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


@contextmanager
def plain_linear():
    """Inside: every `linear` is F.linear (the packed path off), e.g. to count FLOPs:
    torch.utils.flop_counter has no formula for oneDNN's op and would miss those products."""
    was = _packing["ok"]
    _packing["ok"] = False
    try:
        yield
    finally:
        _packing["ok"] = was


def _packed_rows(x: Tensor, w: Tensor, lo: int, hi: int) -> Tensor | None:
    """oneDNN's packed copy of the weight rows w[lo:hi], for `x` @ them, when the packed path
    applies (no autograd, a CPU, float32, at least PACKED_MIN_ROWS rows, autocast off, not
    traced by a compiler); else None. Kept per (weight, lo, hi) and packed again after any
    in-place change to the weight, e.g. an optimizer step or a load."""
    if (not _packing["ok"] or torch.compiler.is_compiling() or torch.is_grad_enabled()
            or x.device.type != "cpu" or x.dtype != torch.float32 or w.dtype != torch.float32
            or x.numel() < PACKED_MIN_ROWS * x.shape[-1]
            or autocast_dtype("cpu") is not None):   # F.linear in autocast's precision
        return None
    try:   # what the packed copy was made from: in-place writes bump the version, and
        state = (w._version, w.data_ptr())   # `w.data = ...` (which keeps it) moves the data
    except RuntimeError:   # an inference tensor has no version counter: nothing to key on
        return None
    key = (id(w), lo, hi)
    entry = _packed.get(key)
    if entry is None or entry[0]() is not w or entry[1] != state:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(w.detach()[lo:hi].contiguous(), 1)
        except Exception:  # noqa: BLE001 - a build without these ops: plain F.linear from now on
            _packing["ok"] = False
            return None
        if entry is None or entry[0]() is not w:
            weakref.finalize(w, _packed.pop, key, None)
        entry = _packed[key] = (weakref.ref(w), state, packed)
    return entry[2]


def linear(x: Tensor, w: Tensor, add: Tensor | None = None) -> Tensor:
    """F.linear(x, w) (no bias), plus `add` (a residual of the output's shape) when given.
    Without autograd, on a CPU, in float32 and over at least PACKED_MIN_ROWS rows (prompt
    fills, the parallel samplers' 64-position steps at batch 16), it runs oneDNN's GEMM on `w`
    packed once (`_packed_rows`), with the addition fused into it: the same values up to
    float rounding (~1e-6 relative). Everything else, and anything a compiler traces, is
    F.linear (then `add` + it)."""
    packed = _packed_rows(x, w, 0, w.shape[0])
    if packed is None:
        return F.linear(x, w) if add is None else add + F.linear(x, w)
    if add is None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, add.contiguous(), packed, None, "add")


def swiglu(x: Tensor, w: Tensor) -> Tensor:
    """silu(x @ gate.T) * (x @ up.T) for w = [gate; up] (2f, d) -> (..., f). On the packed path
    (`linear`) both products run with their elementwise work fused into oneDNN's GEMM (silu
    as the gate's post-op, the product with it as the up projection's): no (..., 2f)
    intermediate, no separate silu and product passes, two fewer large temporaries. Batch-16
    answer prefill MLP at the Janus-compatible shape (1296 rows, 192 -> 2 x 512), 1 thread:
    8.7 against 10.9-13.0 ms (interleaved, noisy machine). Same values up to float rounding."""
    f = w.shape[0] // 2
    gate = _packed_rows(x, w, 0, f)
    if gate is None:
        g, u = F.linear(x, w).chunk(2, dim=-1)
        return F.silu(g) * u
    act = torch.ops.mkldnn._linear_pointwise(x, gate, None, "swish", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, act, _packed_rows(x, w, f, 2 * f),
                                                     None, "mul")


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
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        s = k.shape[2]
        if dropout:
            if s <= EXPLICIT_MAX_KEYS:
                return explicit_attention(q, k, v, mask, is_causal, dropout)
        elif s <= BLOCKED_MAX_KEYS:
            if torch.compiler.is_compiling():
                return _blocked_attention_uncompiled(q, k, v, mask, is_causal)
            return blocked_attention(q, k, v, mask, is_causal)
    h, g = q.shape[1], k.shape[1]
    kwargs = {}
    if h != g:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # torch < 2.5
            k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=is_causal, **kwargs)


# bf16 training on a CPU: attention over at most this many keys runs as `blocked_attention`
# (forward + backward at 1 thread against SDPA: 63 vs 118 ms at 32 x 256 tokens, 105 vs 187 at
# 16 x 512, 206 vs 222 at 8 x 1024, 384 vs 362 at 4 x 2048), and with attention dropout, up
# to EXPLICIT_MAX_KEYS, as `explicit_attention`
BLOCKED_MAX_KEYS = 1024
EXPLICIT_MAX_KEYS = 256
# blocked_attention's pieces: this many query rows of a few sequences, whose float32 scores
# take at most BLOCK_BYTES
BLOCK_ROWS = 64
BLOCK_BYTES = 4 << 20
# explicit_attention's batch chunks: their float32 scores take at most this many bytes
EXPLICIT_CHUNK_BYTES = 8 << 20


def _equal_chunks(b: int, row_bytes: int, budget: int) -> int:
    """Sequences per chunk: as many as fit `budget` bytes (at least one), evened out over the
    chunks that takes (32 rows at 10 per chunk: 4 x 8, not 3 x 10 + 2)."""
    c = max(1, budget // row_bytes)
    return -(-b // -(-b // c))


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
    c = _equal_chunks(b, h * t * k.shape[2] * 4, chunk_bytes)
    if c >= b:
        return _explicit_attention(q, k, v, mask, is_causal, dropout)
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


def blocked_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                      block: int = BLOCK_ROWS, piece_bytes: int = BLOCK_BYTES) -> Tensor:
    """SDPA's function (no dropout) for bf16 training on a CPU, with its own backward.

    Queries are taken `block` rows of a few sequences at a time (float32 scores of at most
    `piece_bytes`, so they stay in cache); under a causal mask a block only reads the keys up to
    its last row, which skips ~40 % of the work at 256 tokens. The forward keeps each block's
    probabilities (bf16, ~16 MB per layer at batch 32 x 256 x 6 heads, less than autograd kept
    for `explicit_attention`) and the backward is written out (dV = P^T dO, dS = P (dO V^T -
    rowsum(dO * O)), dQ = dS K, dK = dS^T Q), accumulating dK, dV in float32 and writing each
    block's dQ in place, where autograd through slices would add full-size zero gradients per
    piece. Forward + backward at batch 32 x 6 heads x 256 tokens, head dim 32, 1 thread: 62 ms
    against 112-137 for `explicit_attention` and 120 for SDPA; 151-166 vs 217-254 vs 277 at 9
    heads of 64 (the ~50M shape). The output is laid out (b, t, h, e) in memory, so the
    caller's transpose + reshape to (b, t, h e) is a view. A fully masked query row gets uniform
    weights, as in `explicit_attention`."""
    b, h, t, _ = q.shape
    c = _equal_chunks(b, h * min(block, t) * k.shape[2] * 4, piece_bytes)
    if mask is not None and mask.dim() == 2:
        mask = mask[None, None]
    return _BlockedAttention.apply(q, k, v, None if is_causal else mask, is_causal, block, c)


# torch.compile leaves blocked_attention to run eagerly between its graphs (a graph break per
# layer): traced, its loops unrolled had not compiled after 19 min at 32 x 256 tokens. At that
# shape (bf16, 1 thread) a train.compile step took 1.42 s this way against 1.85 s eager, side
# by side; with `explicit_attention` traced instead, 1.82 s after 360 s of compiling (~30 s
# this way).
_blocked_attention_uncompiled = torch.compiler.disable(blocked_attention)


class _BlockedAttention(torch.autograd.Function):
    """blocked_attention's forward and backward. Query heads are grouped by kv head (a group
    axis of h / g when g < h); `pieces` lists (first, last sequence, first, last query row,
    keys read) in forward order."""

    @staticmethod
    def _groups(x: Tensor, g: int) -> Tensor:
        """(b, h, t, e) -> (b, g, h/g, t, e), or x itself without grouping."""
        return x if x.shape[1] == g else x.unflatten(1, (g, x.shape[1] // g))

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, block, chunk):
        b, h, t, e = q.shape
        g, s = k.shape[1], k.shape[2]
        scale, low = e ** -0.5, torch.finfo(torch.float32).min
        o = q.new_empty(b, t, h, e).transpose(1, 2)                        # (b, h, t, e) view
        qg, og = _BlockedAttention._groups(q, g), _BlockedAttention._groups(o, g)
        kg, vg = (k, v) if g == h else (k[:, :, None], v[:, :, None])      # (b, g, [1,] s, e)
        if mask is not None and g != h:
            mask = mask[:, :, None]                                        # (b|1, 1, 1, t, s)
        blocks = []                      # query rows [i0, i1), the n keys they see, causal mask
        for i0 in range(0, t, block):
            i1 = min(t, i0 + block)
            n = min(s, i1 + s - t) if is_causal else s
            hide = (torch.ones(i1 - i0, n, dtype=torch.bool, device=q.device)
                    .tril(i0 + s - t).logical_not_() if is_causal else None)
            blocks.append((i0, i1, n, hide))
        probs, pieces = [], []
        for c0 in range(0, b, chunk):
            c1 = min(b, c0 + chunk)
            for i0, i1, n, hide in blocks:
                sc = torch.matmul(qg[c0:c1, ..., i0:i1, :],
                                  kg[c0:c1, ..., :n, :].transpose(-1, -2)).float().mul_(scale)
                if hide is not None:
                    sc.masked_fill_(hide, low)
                elif mask is not None:
                    m = mask[c0:c1] if mask.shape[0] == b else mask
                    sc.masked_fill_(~m[..., i0:i1, :n], low)
                p = torch.softmax(sc, -1).to(q.dtype)
                og[c0:c1, ..., i0:i1, :] = torch.matmul(p, vg[c0:c1, ..., :n, :])
                probs.append(p)
                pieces.append((c0, c1, i0, i1, n))
        ctx.save_for_backward(q, k, v, o, *probs)
        ctx.pieces = pieces
        return o

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, *probs = ctx.saved_tensors
        h, e = q.shape[1], q.shape[3]
        g = k.shape[1]
        scale = e ** -0.5
        dq = torch.empty_like(q)
        dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
        dv = torch.zeros(v.shape, dtype=torch.float32, device=v.device)
        delta = _BlockedAttention._groups((do.float() * o.float()).sum(-1, keepdim=True), g)
        qg, dog, dqg = (_BlockedAttention._groups(x, g) for x in (q, do, dq))
        kg, vg = (k, v) if g == h else (k[:, :, None], v[:, :, None])

        def heads(x: Tensor) -> Tensor:          # a key/value gradient summed over its group
            return x if g == h else x.sum(2)

        for p, (c0, c1, i0, i1, n) in zip(probs, ctx.pieces):
            dob = dog[c0:c1, ..., i0:i1, :]
            dv[c0:c1, :, :n] += heads(torch.matmul(p.transpose(-1, -2), dob))
            dp = torch.matmul(dob, vg[c0:c1, ..., :n, :].transpose(-1, -2)).float()
            ds = dp.sub_(delta[c0:c1, ..., i0:i1, :]).mul_(p).mul_(scale).to(q.dtype)
            dqg[c0:c1, ..., i0:i1, :] = torch.matmul(ds, kg[c0:c1, ..., :n, :])
            dk[c0:c1, :, :n] += heads(torch.matmul(ds.transpose(-1, -2),
                                                   qg[c0:c1, ..., i0:i1, :]))
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None, None


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
        output's shape) when given, added inside the output projection (`linear`)."""
        b, t, _ = x.shape
        h, g, e = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = linear(x, self.qkv.weight).view(b, t, h + 2 * g, e).transpose(1, 2)  # (b, h+2g, t, e)
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
        return linear(y.transpose(1, 2).reshape(b, t, h * e), self.proj.weight, residual)


class SwiGLU(nn.Module):
    """SwiGLU MLP (Shazeer 2020, arXiv:2002.05202): down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)
        self.down.is_residual_proj = True

    def forward(self, x: Tensor, residual: Tensor | None = None) -> Tensor:
        """(b, t, d) -> (b, t, d), plus `residual` when given (added inside `linear`)."""
        return linear(swiglu(x, self.gate_up.weight), self.down.weight, residual)


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
        if self.drop.p and self.training:
            a = self.attn.forward(self.attn_norm.forward(x), rope, mask, is_causal, cache,
                                  layer, start, last)
            x = (x[:, -1:] if last else x) + self.drop(a)
            return x + self.drop(self.mlp.forward(self.mlp_norm.forward(x)))
        # no dropout: each residual addition goes inside the projection before it (`linear`:
        # fused into oneDNN's GEMM over many rows, one pass and one temporary fewer)
        x = self.attn.forward(self.attn_norm.forward(x), rope, mask, is_causal, cache, layer,
                              start, last, residual=x[:, -1:] if last else x)
        return self.mlp.forward(self.mlp_norm.forward(x), residual=x)

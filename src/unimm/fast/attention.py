"""Attention for bf16 training on a CPU: the `attention` of the ops table (model/ops.py).

With gradients, in bf16, on a CPU, SDPA's fused CPU kernel was several times slower forward +
backward than the same function written out (docs/fast.md). So `attention` runs, up to
BLOCKED_MAX_KEYS keys, `blocked_attention` (cache-sized pieces, causal blocks reading only their
keys, a written-out backward; under torch.compile it runs eagerly between the compiled graphs)
and, with attention dropout, up to EXPLICIT_MAX_KEYS, `explicit_attention` (two matmuls and a
float32 softmax, autograd's backward); everything else is the plain SDPA call. Both compute
SDPA's function (tests/test_fast.py: values and gradients); a fully masked query row gets
uniform weights (finite, unlike -inf), so it cannot put NaN into the gradients of the rows that
count.

Letters: b batch, t query tokens, s key tokens, h query heads, g kv heads, e head dim.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from unimm.model import ops


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
              dropout: float) -> Tensor:
    """ops.plain_attention, through `blocked_attention` / `explicit_attention` for bf16
    training on a CPU: q (b, h, t, e), k/v (b, g, s, e), mask Bool (b|1, 1, t, s) or None."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.requires_grad:
        k, v = k.to(q.dtype), v.to(q.dtype)
        s = k.shape[2]
        if dropout:
            if s <= EXPLICIT_MAX_KEYS:
                return explicit_attention(q, k, v, mask, is_causal, dropout)
        elif s <= BLOCKED_MAX_KEYS:
            if torch.compiler.is_compiling():
                return _blocked_attention_uncompiled(q, k, v, mask, is_causal)
            return blocked_attention(q, k, v, mask, is_causal)
    return ops.plain_attention(q, k, v, mask, is_causal, dropout)


# bf16 training on a CPU: attention over at most this many keys runs as `blocked_attention`
# (faster than SDPA up to 1024 keys, slower at 2048: docs/fast.md), and with attention
# dropout, up to EXPLICIT_MAX_KEYS, as `explicit_attention`
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
    """Attention as two matmuls and a float32 softmax, the same function as SDPA, with
    autograd's backward. Used for bf16 training with attention dropout on a CPU, where SDPA's
    fused CPU kernel is several times slower forward + backward. Over longer contexts the
    scores of a whole batch outgrow the caches (50 MB at b 32, h 6, t 256), so they are
    computed for a few sequences at a time (`chunk_bytes` of float32 scores each; figures in
    docs/fast.md). A fully masked query row gets uniform weights (finite, unlike -inf), so it
    cannot put NaN into the gradients of the rows that count."""
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
    piece (about half the time of `explicit_attention` and SDPA: docs/fast.md). The output is
    laid out (b, t, h, e) in memory, so the caller's transpose + reshape to (b, t, h e) is a
    view. A fully masked query row gets uniform weights, as in `explicit_attention`."""
    b, h, t, _ = q.shape
    c = _equal_chunks(b, h * min(block, t) * k.shape[2] * 4, piece_bytes)
    if mask is not None and mask.dim() == 2:
        mask = mask[None, None]
    return _BlockedAttention.apply(q, k, v, None if is_causal else mask, is_causal, block, c)


# torch.compile leaves blocked_attention to run eagerly between its graphs (a graph break per
# layer): traced, its loops unrolled took too long to compile (not done after 19 min at 32 x
# 256 tokens), and this way the compiled training step is still faster (docs/fast.md).
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

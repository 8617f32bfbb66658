"""The model's decoding step and prompt fill written for a compiler (fast/decode.py compiles
them): fixed shapes, the cache read-only inside the graph, new keys and values returned.

Both are built from the eager model's own pieces, so the block's math is defined once
(model/layers.py): `static_fill` runs the eager blocks themselves, with a stand-in for the
cache that keeps the new keys and values; `static_step` runs `Attention.heads`, `Attention.out`
and the block's norms and MLP around an attention of its own (`step_attention`, or the native
kernel `unimm::decode_attention`, fast/kernels.py), since the eager step's (the new token's
keys written into the cache, then SDPA over a prefix whose length grows every step) would make
a compiler recompile per length or copy the cache. tests/test_fast.py compares both with the
eager step and fill.

Letters: r rows, l layers, h query heads, g kv heads, m cache slots, e head dim, d model dim,
b batch, t tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from unimm.fast import kernels


def step_bias(slots: Tensor, start: int, dtype: torch.dtype) -> Tensor:
    """The additive attention mask of a decoding step, (r, m) in `dtype`: 0 where a row may
    attend to a cache slot (`slots`, Bool (r, m): its valid prefix and every generated slot)
    that is already written (before `start`, the new token's slot), -inf elsewhere."""
    bias = torch.zeros(slots.shape, dtype=dtype, device=slots.device)
    bias.masked_fill_(~slots, float("-inf"))
    bias[:, start:] = float("-inf")
    return bias


def step_attention(q: Tensor, k_cache: Tensor, v_cache: Tensor, bias: Tensor, k: Tensor,
                   v: Tensor, scale: float) -> Tensor:
    """A decoding step's attention, written out for the compiler: queries q (r, g, n, e) (n
    per key/value head) against the cache's keys / values (r, g, m, e) under the additive mask
    bias (r, m), and against the new token's own k, v (r, g, 1, e), which are not in the cache
    yet. Returns (r, g, n, e). What the native CPU kernel `unimm::decode_attention` computes.
    Written out (scores, max, exp, weighted sum) so that inductor fuses it into a few loops
    instead of calling SDPA around copies."""
    kc, vc = k_cache.to(q.dtype), v_cache.to(q.dtype)
    s_old = (q @ kc.transpose(-1, -2)) * scale + bias[:, None, None]        # (r, g, n, m)
    s_new = (q * k).sum(-1, keepdim=True) * scale                           # (r, g, n, 1)
    top = torch.maximum(s_old.amax(-1, keepdim=True), s_new)
    p_old, p_new = (s_old - top).exp(), (s_new - top).exp()
    return (p_old @ vc + p_new * v) / (p_old.sum(-1, keepdim=True) + p_new)


def static_step(model, tok: Tensor, pos: Tensor, bias: Tensor, k_cache: Tensor,
                v_cache: Tensor, lo: int, hi: int,
                native: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """One new token per row against a read-only cache.

    tok (r, 1) token ids, pos (r, 1, 3) positions, bias (r, m) the additive mask over the
    cache's slots (`step_bias`; given as an input, not built from the slots in the graph: the
    compiler would recompute it inside every attention loop), caches (l, r, g, m, e), [lo, hi)
    the vocabulary slice to score. Returns float32 logits (r, hi - lo) of the next token and
    the new token's keys / values (l, r, g, 1, e). `native`: the attention through the CPU
    kernel `unimm::decode_attention` (fast/kernels.py) where it applies (float32 on a CPU)
    and builds; else written out here for the compiler."""
    bb = model.backbone
    cfg = bb.cfg
    r = tok.shape[0]
    h, g, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    x = model.embed_tokens(tok, pos, dense=True)                           # (r, 1, d)
    rot = bb.rotary      # the rotary tables read directly (Rotary.forward checks positions)
    coord = pos[..., rot.axis]
    rope = rot.cos[coord, rot.pair].unsqueeze(1), rot.sin[coord, rot.pair].unsqueeze(1)
    attend = step_attention
    if native and k_cache.device.type == "cpu" and (
            x.dtype == k_cache.dtype == bias.dtype == torch.float32):
        attend = kernels.decode_attention() or step_attention
    keys, values = [], []
    for layer, blk in enumerate(bb.blocks):
        q, k, v = blk.attn.heads(blk.attn_norm(x), rope)                  # (r, h|g, 1, e)
        keys.append(k)
        values.append(v)
        y = attend(q.view(r, g, h // g, e), k_cache[layer], v_cache[layer], bias, k, v,
                   e ** -0.5)                                               # (r, g, h/g, e)
        x = blk.attn.out(y.reshape(r, h, 1, e), residual=x)
        x = blk.mlp(blk.mlp_norm(x), residual=x)
    logits = model.logits(bb.norm(x)[:, -1], lo, hi).float()
    return logits, torch.stack(keys), torch.stack(values)


class _Kept:
    """Stands in for the cache in `static_fill`: keeps each layer's new keys and values (for
    the caller to write into the real cache) and hands them back as the keys to attend to,
    which is what a cache written from slot 0 returns."""

    def __init__(self):
        self.k, self.v = [], []

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        self.k.append(k)
        self.v.append(v)
        return k, v


def static_fill(model, x: Tensor, pos: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """A prompt fill (`Backbone.forward(x, pos, mask, cache, start=0, last=True)`) for
    AOTInductor, with the cache left out of the graph: x (b, t, d) input embeddings, pos
    (b, t, 3), mask Bool (b, 1, t, t) "may attend". Returns the last token's final hidden
    state (b, 1, d) and every token's keys and values (l, b, g, t, e), which
    `DecodeStep.fill` writes into the cache. The eager blocks themselves (the last one
    computes its attention output and MLP for the last token only), so inductor can fuse
    rotary, the norms and the residual additions around oneDNN's GEMMs."""
    bb = model.backbone
    rope = bb.rotary(pos)                                                   # (b, 1, t, p) x 2
    kept = _Kept()
    n = len(bb.blocks)
    for layer, blk in enumerate(bb.blocks):
        x = blk(x, rope, mask, False, kept, layer, 0, last=layer == n - 1)
    return bb.norm(x), torch.stack(kept.k), torch.stack(kept.v)

"""One-token decoding steps with fixed shapes, for `torch.compile`.

The eager step (`Backbone.forward` with a cache) attends over the filled part of the cache,
whose length grows every step, and writes the new key/value into the cache inside the graph; a
compiler then either recompiles per length or copies whole cache buffers to make the write
functional (measured: slower than eager). This step is written for a compiler instead:

- every tensor has the same shape at every step: attention reads all `m` slots of the cache
  under a mask (slots not yet written, left padding and slots at or after `idx` are masked);
- the cache is only *read* inside the graph: the new token attends to the cached slots plus
  itself (its own key/value held apart, combined in one softmax), and returns its keys/values,
  which `DecodeStep` writes into the cache afterwards in one `index_copy_` per tensor;
- attention is written out (scores, max, exp, weighted sum), so inductor fuses it into a few
  loops instead of calling SDPA around copies.

So one compiled graph serves every step of a decoding loop of a given (rows, capacity). The
result equals the eager step up to float rounding (~2e-6 on hidden states at the default
size; tests compare both).

Letters: r rows, l layers, h query heads, g kv heads, m cache slots, e head dim, d model dim.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from unimm.model.cache import KVCache
from unimm.model.rotary import apply_rotary


def static_step(model, tok: Tensor, pos: Tensor, slots: Tensor, idx: Tensor,
                k_cache: Tensor, v_cache: Tensor, lo: int, hi: int
                ) -> tuple[Tensor, Tensor, Tensor]:
    """One new token per row against a read-only cache.

    tok (r, 1) token ids, pos (r, 1, 3) positions, slots Bool (r, m) cache slots a row may
    attend to once written (its valid prefix and every generated slot), idx Long (1,) the new
    token's slot (slots >= idx are not written yet), caches (l, r, g, m, e), [lo, hi) the
    vocabulary slice to score. Returns float32 logits (r, hi - lo) of the next token and the new
    token's keys / values (l, r, g, 1, e)."""
    bb = model.backbone
    cfg = bb.cfg
    r = tok.shape[0]
    h, g, e = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    m = k_cache.shape[3]
    x = model.embed_tokens(tok, pos, dense=True)                           # (r, 1, d)
    rot = bb.rotary
    coord = pos[..., rot.axis]
    cos, sin = rot.cos[coord, rot.pair].unsqueeze(1), rot.sin[coord, rot.pair].unsqueeze(1)
    open_ = slots & (torch.arange(m, device=tok.device) < idx)              # (r, m)
    bias = torch.zeros(open_.shape, dtype=x.dtype, device=x.device).masked_fill(
        ~open_, float("-inf"))[:, None, None, :]                            # (r, 1, 1, m)
    scale = e ** -0.5
    keys, values = [], []
    for layer, blk in enumerate(bb.blocks):
        at = blk.attn
        qkv = F.linear(blk.attn_norm.forward(x), at.qkv.weight)
        qkv = qkv.view(r, 1, h + 2 * g, e).transpose(1, 2)                 # (r, h+2g, 1, e)
        if at.qk_norm:
            q, k = at.q_norm.forward(qkv[:, :h]), at.k_norm.forward(qkv[:, h:h + g])
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        else:
            q, k = apply_rotary(qkv[:, :h + g], cos, sin).split([h, g], dim=1)
        v = qkv[:, h + g:]                                                  # (r, g, 1, e)
        keys.append(k)
        values.append(v)
        q = q.view(r, g, h // g, e)                                         # grouped heads
        kc, vc = k_cache[layer].to(q.dtype), v_cache[layer].to(q.dtype)     # (r, g, m, e)
        s_old = (q @ kc.transpose(-1, -2)) * scale + bias                  # (r, g, h/g, m)
        s_new = (q * k).sum(-1, keepdim=True) * scale                       # (r, g, h/g, 1)
        top = torch.maximum(s_old.amax(-1, keepdim=True), s_new)
        p_old, p_new = (s_old - top).exp(), (s_new - top).exp()
        y = (p_old @ vc + p_new * v) / (p_old.sum(-1, keepdim=True) + p_new)  # (r, g, h/g, e)
        x = x + F.linear(y.reshape(r, 1, h * e), at.proj.weight)
        x = x + blk.mlp.forward(blk.mlp_norm.forward(x))
    logits = model.logits(bb.norm.forward(x)[:, -1], lo, hi).float()
    return logits, torch.stack(keys), torch.stack(values)


class DecodeStep:
    """`static_step` compiled once per (rows, capacity, vocabulary slice) and applied to a
    KVCache: computes the step, writes the new keys/values at `start`, advances
    `cache.length`, returns the logits."""

    def __init__(self, model):
        self.model = model
        self.failed = None       # why compiling failed (then every step runs eagerly)
        # freezing: weights become constants of the graph (prepacked for oneDNN on CPU), so
        # the compiled step is for inference only and is stale once the weights change
        self.fn = torch.compile(lambda *a: static_step(model, *a), fullgraph=True,
                                dynamic=False, options={"freezing": True})

    def __call__(self, tok: Tensor, pos: Tensor, slots: Tensor, cache: KVCache,
                 start: int, lo: int, hi: int) -> Tensor:
        if not 0 < start <= cache.length or start >= cache.max_len:
            raise ValueError(f"start={start} must follow the cache's filled slots "
                             f"(length {cache.length}, capacity {cache.max_len})")
        if start >= self.model.cfg.max_seq_len:
            raise ValueError(f"position index {start} reaches max_seq_len="
                             f"{self.model.cfg.max_seq_len}")
        idx = torch.tensor([start], device=tok.device)
        if self.failed is None:
            try:
                logits, k, v = self.fn(tok, pos, slots, idx, cache.k, cache.v, lo, hi)
            except Exception as err:   # no C++ compiler, an unsupported op, ...: run eagerly
                self.failed = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
                warnings.warn(f"compiled decoding unavailable, decoding eagerly ({self.failed})")
        if self.failed is not None:
            logits, k, v = static_step(self.model, tok, pos, slots, idx, cache.k, cache.v,
                                       lo, hi)
        cache.k.index_copy_(3, idx, k.to(cache.k.dtype))
        cache.v.index_copy_(3, idx, v.to(cache.v.dtype))
        cache.length = start + 1
        return logits

"""The cache window of the compiled decoding steps (fast/decode.py), plugged into the cache's
`sync` seam (model/cache.py).

An AOTInductor step reads a compact copy of the cache's first w slots, (l, r, g, w, e) each for
keys and values, w the next multiple of WINDOW that holds the new token's slot, instead of the
whole capacity: with many rows, reading all of a large capacity made a step much slower once
the cache outgrew the last-level cache (docs/fast.md). The step writes its new slot into the
window only, so slots [pending, length) are newer there than in the cache's k, v; the window
is the cache's `sync`, which writes them back in one block (a scattered write into the whole
cache every step cost more than the step's attention) whenever anything else reads or writes
the cache, and drops the copy. The next step copies a fresh window from k, v.

The windows of a cache share one allocation (`store`, the cache's size, from the cache's pool
when it has one, going back with the cache): a fresh zeroed tensor per regrowth cost page
faults every time. Once the next window would reach the capacity, the window is the cache
itself (k, v): no copy at all, nothing pending.

Letters: l layers, r rows, g kv heads, w window slots, m capacity, e head dim.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from unimm.model.cache import KVCache

WINDOW = 16  # windows hold the cache's first slots in multiples of this many


class Window:
    """A cache's window (`KVCache.sync`): `k`, `v` (l, r, g, w, e) or None once dropped."""

    def __init__(self):
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        self.copy = False                 # k, v are a copy (else the cache's own k, v)
        self.pending: int | None = None   # slots [pending, cache.length) are newer here
        self.store: tuple[Tensor, Tensor] | None = None   # the copies' memory

    def __call__(self, cache: KVCache) -> None:
        """The cache's sync: write the pending slots back into k, v; drop the copy."""
        if self.pending is not None:
            p, s = self.pending, cache.length
            cache.k[:, :, :, p:s] = self.k[:, :, :, p:s]
            cache.v[:, :, :, p:s] = self.v[:, :, :, p:s]
            self.pending = None
        self.k = self.v = None

    @staticmethod
    def of(cache: KVCache, start: int) -> Window:
        """The window of `cache` that holds slot `start`, made or regrown (copied from the
        complete k, v) when it does not."""
        win = cache.sync
        if not isinstance(win, Window):
            cache.flush()
            win = cache.sync = Window()
        need = min(cache.max_len, WINDOW * -(-(start + 1) // WINDOW))
        if win.k is None or win.k.shape[3] < need:
            cache.flush()                            # k, v are complete: copy the window anew
            if need + WINDOW >= cache.max_len:       # the rest fits in one more window:
                win.k, win.v, win.copy = cache.k, cache.v, False   # read the whole cache
                return win
            if win.store is None:
                win.store = (_scratch(cache), _scratch(cache))
            l, r, g, _, e = cache.k.shape
            n = l * r * g * need * e
            win.k, win.v = (s[:n].view(l, r, g, need, e) for s in win.store)
            win.k.copy_(cache.k[:, :, :, :need])
            win.v.copy_(cache.v[:, :, :, :need])
            win.copy = True
        return win

    def wrote(self, start: int) -> None:
        """A step wrote slot `start` into the window."""
        if self.copy:
            self.pending = start if self.pending is None else min(self.pending, start)


def _scratch(cache: KVCache) -> Tensor:
    """Uninitialised flat memory for as many elements as the cache's k, from its pool when it
    has one (given back when the cache is garbage-collected)."""
    n, dtype, device = cache.k.numel(), cache.k.dtype, cache.k.device
    if cache.pool is None:
        return torch.empty(n, dtype=dtype, device=device)
    t = cache.pool.take(n, dtype, device, zero=False)
    weakref.finalize(cache, cache.pool.give, [t])
    return t

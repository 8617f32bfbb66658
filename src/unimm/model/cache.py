"""Preallocated key/value cache for `Backbone` (one tensor pair for all layers).

Writes are positional, not appends: a forward with `start` writes keys/values for
[start, start + t) in place and attends to [0, start + t). So a prompt is computed once and
any later span can be rewritten as often as needed (masked decoding recomputes the image span
every step with the same `start`), and `length` only guards against attending to slots that
were never written. Rows are independent batch entries (CFG: conditional and unconditional rows
side by side); `select_rows` repeats or picks rows, `clone` branches a whole cache, `rows` is a
view of some rows (writes land in this cache) and `copy_slots` copies slots between rows.

Two seams for speed paths (unimm.fast), both unused by the plain model:
- `pool` (`empty(..., pool=)`): where the memory comes from and goes back to once the cache is
  garbage-collected (an object with `take(n, dtype, device)` and `give(buffers)`); None: plain
  zeroed tensors.
- `sync`: a speed path that keeps the newest slots elsewhere (the compiled decoding steps keep
  a compact window of the first slots) sets it; every method here calls it (`flush`) before it
  reads or writes k, v, and it must then leave k, v complete and drop its own copy. Whoever
  reads k, v directly calls `flush` first.

Letters: l layers, b batch, g kv heads, m capacity (slots), e head dim, t new tokens.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class KVCache:
    k: Tensor  # (l, b, g, m, e)
    v: Tensor  # (l, b, g, m, e)
    length: int = 0  # slots [0, length) hold keys/values written by earlier calls
    sync: Callable[[KVCache], None] | None = field(default=None, repr=False)  # see the notes
    pool: Any = field(default=None, repr=False)   # where its memory goes back (`empty`)

    @classmethod
    def empty(cls, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
              pool: Any = None) -> KVCache:
        """A zeroed cache. With `pool`, its memory comes from there and goes back when the
        cache is garbage-collected, so nothing may keep a view of k, v beyond the cache (the
        samplers' own caches; `Backbone.new_cache(reuse=True)`)."""
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        if pool is None:
            return cls(torch.zeros(shape, dtype=dtype, device=device),
                       torch.zeros(shape, dtype=dtype, device=device))
        n = n_layers * batch * n_kv_heads * max_len * head_dim
        k, v = pool.take(n, dtype, device), pool.take(n, dtype, device)
        cache = cls(k.view(shape), v.view(shape), pool=pool)
        weakref.finalize(cache, pool.give, [k, v])
        return cache

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def check(self, batch: int, start: int, t: int) -> None:
        """Clear errors for a forward that would write [start, start + t) of `batch` rows."""
        if batch != self.batch:
            raise ValueError(f"cache holds {self.batch} rows but the input has {batch}; "
                             f"use cache.select_rows(...) to match")
        if start < 0 or start > self.length:
            raise ValueError(f"start={start} must lie in [0, cache.length={self.length}]: "
                             f"slots before start must have been written")
        if start + t > self.max_len:
            raise ValueError(f"writing [{start}, {start + t}) overflows the cache "
                             f"(max_len={self.max_len})")

    def flush(self) -> None:
        """Make k, v complete: slots a speed path holds elsewhere (`sync`) are written back."""
        if self.sync is not None:
            self.sync(self)

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (b, g, t, e) at [start, start + t); return keys/values (b, g, s, e)
        for [0, s), s = start + t."""
        s = start + k.shape[2]
        self.flush()
        self.k[layer, :, :, start:s] = k
        self.v[layer, :, :, start:s] = v
        return self.k[layer, :, :, :s], self.v[layer, :, :, :s]

    def clone(self) -> KVCache:
        """Independent copy (branch several continuations from one prefix)."""
        self.flush()
        return KVCache(self.k.clone(), self.v.clone(), self.length)

    def select_rows(self, rows: Tensor | list[int]) -> KVCache:
        """New cache with the given rows (repeats allowed): e.g. [0, 0, 0, 0] turns a
        one-row prompt into four samples, [0, 1, 0, 1] pairs cond/uncond rows for CFG."""
        self.flush()
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        return KVCache(self.k[:, rows], self.v[:, rows], self.length)

    def rows(self, a: int, b: int) -> KVCache:
        """Rows [a, b) as a cache of their own that shares this one's memory (writes through it
        land here), with this one's length; e.g. to fill some rows' prompts apart."""
        self.flush()
        return KVCache(self.k[:, a:b], self.v[:, a:b], self.length)

    def copy_slots(self, src: int, src_start: int, dst: int, dst_start: int, n: int) -> None:
        """Copy row `src`'s slots [src_start, src_start + n) (every layer) into row `dst` at
        [dst_start, dst_start + n): one prefix computed once, shared by rows whose left
        padding puts it at other offsets."""
        self.flush()
        self.k[:, dst, :, dst_start:dst_start + n] = self.k[:, src, :, src_start:src_start + n]
        self.v[:, dst, :, dst_start:dst_start + n] = self.v[:, src, :, src_start:src_start + n]

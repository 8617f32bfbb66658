"""Preallocated key/value cache for `Backbone` (one tensor pair for all layers).

Writes are positional, not appends: a forward with `start` writes keys/values for
[start, start + t) in place and attends to [0, start + t). So a prompt is computed once and
any later span can be rewritten as often as needed (masked decoding recomputes the image span
every step with the same `start`), and `length` only guards against attending to slots that
were never written. Rows are independent batch entries (CFG: conditional and unconditional rows
side by side); `select_rows` repeats or picks rows, `clone` branches a whole cache.

A sampler's cache can take its memory from a `BufferPool` (`KVCache.empty(..., pool=)`) and
give it back when the cache is garbage-collected: on a CPU a fresh allocation of tens of MB is
paid again in page faults on every call (zero-filling the 27 MB cache of a guided batch-16
Janus-size image call took ~20 ms of its ~0.4 s on the dev CPU).

Letters: l layers, b batch, g kv heads, m capacity (slots), e head dim, t new tokens.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor


class BufferPool:
    """Flat buffers that finished sampling calls handed back, for the next call to reuse.
    `take` returns the smallest free buffer large enough (same dtype and device, and made in
    the same inference mode, since an inference tensor cannot be written outside it), else a
    new one; at most `max_bytes` are kept. Thread-safe; copies of a model get an empty pool."""

    def __init__(self, max_bytes: int = 512 << 20):
        self.max_bytes = max_bytes
        self._free: list[Tensor] = []
        self._lock = threading.Lock()

    def take(self, n: int, dtype: torch.dtype, device: torch.device | str | None,
             zero: bool = True) -> Tensor:
        dev = torch.device(device if device is not None else "cpu")
        inference = torch.is_inference_mode_enabled()
        with self._lock:
            fits = [b for b in self._free if b.numel() >= n and b.dtype == dtype
                    and b.device == dev and b.is_inference() == inference]
            best = min(fits, key=lambda b: b.numel(), default=None)
            if best is not None:
                self._free = [b for b in self._free if b is not best]
        if best is None:
            return (torch.zeros if zero else torch.empty)(n, dtype=dtype, device=dev)
        out = best[:n]
        return out.zero_() if zero else out

    def give(self, buffers: list[Tensor]) -> None:
        with self._lock:
            for b in buffers:
                base = b if b._base is None else b._base
                if not any(f is base for f in self._free):
                    self._free.append(base)
            while self._held() > self.max_bytes:
                self._free.pop(0)                                    # the oldest first

    def nbytes(self) -> int:
        with self._lock:
            return self._held()

    def _held(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._free)

    def __deepcopy__(self, memo) -> BufferPool:
        return BufferPool(self.max_bytes)

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])


@dataclass
class KVCache:
    k: Tensor  # (l, b, g, m, e)
    v: Tensor  # (l, b, g, m, e)
    length: int = 0  # slots [0, length) hold keys/values written by earlier calls
    # Compiled decoding steps (fast/decode.py) work on a compact copy of the first w slots,
    # (k, v) each (l, b, g, w, e), instead of the whole capacity, and write their new slots only
    # there: slots [pending, length) are then newer in the window than in k, v. `flush` copies
    # them back in one block (a scattered write into the whole cache every step cost more than
    # the step's attention); `update`, `clone` and `select_rows` flush first, and so must any
    # other reader of k, v. `update` then drops the window (rebuilt from k, v when needed).
    window: tuple[Tensor, Tensor] | None = field(default=None, repr=False)
    pending: int | None = field(default=None, repr=False)
    window_store: tuple[Tensor, Tensor] | None = field(default=None, repr=False)  # its memory
    pool: BufferPool | None = field(default=None, repr=False)   # where its memory goes back
    memory: list[Tensor] = field(default_factory=list, repr=False)  # what it took from pool

    @classmethod
    def empty(cls, n_layers: int, batch: int, n_kv_heads: int, max_len: int, head_dim: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
              pool: BufferPool | None = None) -> KVCache:
        """A zeroed cache. With `pool`, its memory comes from there and goes back when the
        cache is garbage-collected, so nothing may keep a view of k, v beyond the cache (the
        samplers' own caches; `Backbone.new_cache(reuse=True)`)."""
        shape = (n_layers, batch, n_kv_heads, max_len, head_dim)
        if pool is None:
            return cls(torch.zeros(shape, dtype=dtype, device=device),
                       torch.zeros(shape, dtype=dtype, device=device))
        n = n_layers * batch * n_kv_heads * max_len * head_dim
        k, v = pool.take(n, dtype, device), pool.take(n, dtype, device)
        cache = cls(k.view(shape), v.view(shape), pool=pool, memory=[k, v])
        weakref.finalize(cache, pool.give, cache.memory)
        return cache

    def scratch(self, like: Tensor) -> Tensor:
        """Uninitialised flat memory for as many elements as `like`, from the cache's pool
        when it has one (returned with the cache)."""
        if self.pool is None:
            return torch.empty(like.numel(), dtype=like.dtype, device=like.device)
        t = self.pool.take(like.numel(), like.dtype, like.device, zero=False)
        self.memory.append(t)
        return t

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
        """Copy the slots only the window holds (see `window`) into k, v."""
        if self.pending is not None:
            p, s = self.pending, self.length
            self.k[:, :, :, p:s] = self.window[0][:, :, :, p:s]
            self.v[:, :, :, p:s] = self.window[1][:, :, :, p:s]
            self.pending = None

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v (b, g, t, e) at [start, start + t); return keys/values (b, g, s, e)
        for [0, s), s = start + t."""
        s = start + k.shape[2]
        self.flush()
        self.window = None
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

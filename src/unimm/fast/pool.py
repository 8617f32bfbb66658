"""Memory pools for the samplers' caches (the `new_pool` of the ops table, model/ops.py).

A sampler's cache (`Backbone.new_cache(reuse=True)`) takes its memory from its backbone's
`BufferPool` and gives it back when the cache is garbage-collected (`KVCache.empty(pool=)`), and
so do the compiled steps' cache windows (fast/window.py): on a CPU a fresh allocation of tens of
MB is paid again in page faults on every call (docs/fast.md).
"""

from __future__ import annotations

import threading

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

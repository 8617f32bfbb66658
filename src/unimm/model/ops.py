"""The seam between the plain model and its speed paths: a table of replaceable operations.

The blocks (layers.py) run their three heavy operations through this module, looked up at
call time: `linear`, `swiglu` and `attention`. The functions here are the plain PyTorch ones
(F.linear, SDPA). `unimm.fast.install()` replaces them through `use` with versions that take a
CPU fast path where one applies (oneDNN's packed GEMMs, blocked bf16 attention) and call these
otherwise; every replacement computes the same function (tests/test_fast.py compares them).
`new_pool` is the memory seam: a factory of the pools that samplers' caches take their memory
from (`Backbone.new_cache(reuse=True)`); None here, so caches are plain zeroed tensors.

`fast` is the speed package that `load_fast` installed when the model package was first
imported (None with UNIMM_FAST=0 or without unimm.fast); `plain()` runs the plain table for a
while (e.g. to count FLOPs, which torch's counter cannot do for oneDNN's ops).

Letters: b batch, t query tokens, s key tokens, h query heads, g kv heads, e head dim,
d in features, n out features.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor

_SDPA_HAS_GQA = tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 5)


def plain_linear(x: Tensor, w: Tensor, add: Tensor | None = None) -> Tensor:
    """x (..., d) @ w (n, d).T, no bias, plus `add` (a residual of the output's shape) when
    given."""
    return F.linear(x, w) if add is None else add + F.linear(x, w)


def plain_swiglu(x: Tensor, w: Tensor) -> Tensor:
    """silu(x @ gate.T) * (x @ up.T) for w = [gate; up] (2f, d) -> (..., f)."""
    g, u = F.linear(x, w).chunk(2, dim=-1)
    return F.silu(g) * u


def plain_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                    dropout: float) -> Tensor:
    """Scaled dot-product attention: q (b, h, t, e), k/v (b, g, s, e), mask Bool "may attend"
    (b|1, 1, t, s) or None -> (b, h, t, e). Grouped-query attention through SDPA's
    `enable_gqa` (no key/value copies)."""
    k, v = k.to(q.dtype), v.to(q.dtype)  # a float32 cache under bf16 autocast
    h, g = q.shape[1], k.shape[1]
    kwargs = {}
    if h != g:
        if _SDPA_HAS_GQA:
            kwargs["enable_gqa"] = True
        else:  # torch < 2.5
            k, v = k.repeat_interleave(h // g, dim=1), v.repeat_interleave(h // g, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                          is_causal=is_causal, **kwargs)


linear: Callable[..., Tensor] = plain_linear
swiglu: Callable[[Tensor, Tensor], Tensor] = plain_swiglu
attention: Callable[..., Tensor] = plain_attention
new_pool: Callable[[], object] | None = None
PLAIN = {"linear": plain_linear, "swiglu": plain_swiglu, "attention": plain_attention,
         "new_pool": None}

fast: ModuleType | None = None


def use(**table) -> dict:
    """Replace entries of the table (names as in PLAIN); returns the entries they replaced."""
    unknown = set(table) - set(PLAIN)
    if unknown:
        raise ValueError(f"unknown operations {sorted(unknown)}; the table has {sorted(PLAIN)}")
    old = {name: globals()[name] for name in table}
    globals().update(table)
    return old


@contextmanager
def plain() -> Iterator[None]:
    """Inside: the plain operations (for the whole process: meant for measuring, not for
    threads that run the model meanwhile)."""
    old = use(**{k: v for k, v in PLAIN.items() if k != "new_pool"})
    try:
        yield
    finally:
        use(**old)


def load_fast() -> ModuleType | None:
    """Import unimm.fast and install it, unless UNIMM_FAST is "0" or the package is missing;
    the package or None (also kept as `fast`). Run once, when the model package is imported."""
    global fast
    if os.environ.get("UNIMM_FAST", "1") == "0":
        return None
    try:
        module = importlib.import_module("unimm.fast")
    except ModuleNotFoundError as err:
        if err.name != "unimm.fast":   # the package is there but broken: say so
            raise
        return None
    module.install()
    fast = module
    return fast


def require_fast(what: str) -> ModuleType | None:
    """The fast package for `what` (e.g. "compiled decoding"), or None with a warning that says
    why it is off and that the model runs eagerly instead."""
    if fast is None:
        why = ("UNIMM_FAST=0" if os.environ.get("UNIMM_FAST", "1") == "0"
               else "unimm.fast is not installed")
        warnings.warn(f"{what} needs the fast package ({why}); running eagerly instead",
                      stacklevel=3)
    return fast

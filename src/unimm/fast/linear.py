"""Projections on oneDNN's packed weights: the `linear` and `swiglu` of the ops table
(model/ops.py) for float32 inference on a CPU over many rows.

Without autograd, on a CPU, in float32 and over at least PACKED_MIN_ROWS rows (prompt fills,
the parallel samplers' 64-position steps at batch 16), a projection runs oneDNN's GEMM on a
copy of its weight packed once into oneDNN's blocked layout (`torch.ops.mkldnn`, kept per
weight and packed again after any in-place change to it), with the residual addition (`linear`)
or SwiGLU's silu and product (`swiglu`) fused into the GEMM as post-ops. Everything else, and
anything a compiler traces, is the plain operation. Same values up to float rounding (~1e-6
relative); measured gains in docs/fast.md.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor

from unimm.model import ops
from unimm.model.layers import autocast_dtype

# float32 inference on a CPU over at least this many rows: the packed GEMM (`linear`); below
# it F.linear (MKL) was faster on the dev CPU (docs/fast.md)
PACKED_MIN_ROWS = 256
_packed: dict[tuple, tuple] = {}   # (id(weight), lo, hi) -> (weakref, (version, ptr), packed)
_packing = {"ok": torch.backends.mkldnn.is_available()}


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
    """ops.plain_linear: F.linear(x, w) (no bias) plus `add` when given; on the packed path
    (`_packed_rows`) oneDNN's GEMM with the addition fused into it."""
    packed = _packed_rows(x, w, 0, w.shape[0])
    if packed is None:
        return ops.plain_linear(x, w, add)
    if add is None:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, add.contiguous(), packed, None, "add")


def swiglu(x: Tensor, w: Tensor) -> Tensor:
    """ops.plain_swiglu: silu(x @ gate.T) * (x @ up.T) for w = [gate; up] (2f, d). On the
    packed path both products run with their elementwise work fused into oneDNN's GEMM (silu
    as the gate's post-op, the product with it as the up projection's): no (..., 2f)
    intermediate, no separate silu and product passes, two fewer large temporaries."""
    f = w.shape[0] // 2
    gate = _packed_rows(x, w, 0, f)
    if gate is None:
        return ops.plain_swiglu(x, w)
    act = torch.ops.mkldnn._linear_pointwise(x, gate, None, "swish", [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, act, _packed_rows(x, w, f, 2 * f),
                                                     None, "mul")

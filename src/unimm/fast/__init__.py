"""CPU speed paths for the plain model (unimm.model), plugged into its documented seams.

Delete this package, or set UNIMM_FAST=0, and unimm computes the same outputs more slowly
(tests/test_fast.py holds the parity tests of the paths here against the plain ones).

linear.py     `linear`, `swiglu` on weights packed once for oneDNN (float32 inference on a
              CPU over many rows; residual additions and SwiGLU fused into the GEMMs)
attention.py  `attention`: blocked / explicit attention for bf16 training on a CPU
decode.py     DecodeStep: the one-token decoding step and prompt fill compiled by AOTInductor
              (or torch.compile), libraries kept on disk, applied to a KVCache
kernels.py    native CPU kernels built on first use (csrc/decode_attention.cpp)

`install` fills the ops table (model/ops.py); it runs when the model package is first
imported (unless UNIMM_FAST=0). Measurements: docs/fast.md.
"""

from __future__ import annotations


def install() -> None:
    """Put the CPU paths into the ops table: each falls back to the plain operation wherever
    its own path does not apply. (Imports here, not at the top: importing the model package
    runs this, also when this package was imported first.)"""
    from unimm.fast import attention, linear
    from unimm.model import ops
    ops.use(linear=linear.linear, swiglu=linear.swiglu, attention=attention.attention)


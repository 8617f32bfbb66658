"""CPU speed paths for the plain model (unimm.model), plugged into its documented seams.

Delete this package, or set UNIMM_FAST=0, and unimm computes the same outputs more slowly
(tests/test_fast.py holds the parity tests of every path here against the plain one).

linear.py     `linear`, `swiglu` on weights packed once for oneDNN (float32 inference on a
              CPU over many rows; residual additions and SwiGLU fused into the GEMMs)
attention.py  `attention`: blocked / explicit attention for bf16 training on a CPU
pool.py       BufferPool: the memory samplers' caches reuse from call to call
steps.py      the decoding step and prompt fill written for a compiler, from the model's
              own pieces (Attention.heads / out, the blocks)
decode.py     DecodeStep: those compiled by AOTInductor (or torch.compile), libraries kept on
              disk, applied to a KVCache
window.py     Window: the compact copy of a cache's first slots that compiled steps read
              (the cache's `sync`)
kernels.py    native CPU kernels built on first use (csrc/decode_attention.cpp)

Seams (model/__init__.py lists them): `install` fills the ops table (model/ops.py) and is run
when the model package is first imported (unless UNIMM_FAST=0); `compile_decode` sets a
model's `decoder` and its backbone's `filler` (TokenModel.compile_decode calls it); the window
is a cache's `sync`, and pools back `KVCache.pool`. Measurements: docs/fast.md.
"""

from __future__ import annotations


def install() -> None:
    """Put the CPU paths into the ops table: each falls back to the plain operation wherever
    its own path does not apply. (Imports here, not at the top: importing the model package
    runs this, also when this package was imported first.)"""
    from unimm.fast import attention, linear, pool
    from unimm.model import ops
    ops.use(linear=linear.linear, swiglu=linear.swiglu, attention=attention.attention,
            new_pool=pool.BufferPool)


def compile_decode(model, backend: str = "aoti"):
    """Decode `model` (a TokenModel) through a compiled fixed-shape step (`decode_logits` ->
    `model.decoder`), and run its prompt fills (the backbone over a prompt from cache slot 0,
    last token out) through a compiled library (`model.backbone.filler`; AOTInductor, float32
    on a CPU); the first step of each new shape pays the compile. backend: "aoti"
    (AOTInductor, no per-call guards; per vocabulary slice one library for up to 8 rows and
    one for 9 to 256, any cache capacity) or "inductor" (torch.compile, one graph per rows x
    cache capacity). Returns the DecodeStep."""
    from unimm.fast.decode import DecodeStep
    step = DecodeStep(model, backend)
    model.decoder = step
    model.backbone.filler = step.fill
    return step

"""Compiled one-token decoding steps and prompt fills (AOTInductor or `torch.compile`), plugged
into the model's `decoder` and `filler` seams by `unimm.fast.compile_decode`.

The eager step (`Backbone.forward` with a cache) attends over the filled part of the cache,
whose length grows every step, and writes the new key/value into the cache inside the graph; a
compiler then either recompiles per length or copies whole cache buffers to make the write
functional (measured: slower than eager). The compiled step (`steps.static_step`) is written
for a compiler instead:

- every tensor has the same shape at every step: attention reads the cache's slots under an
  additive mask given as an input (`step_bias`: slots not yet written and left padding are
  masked);
- the cache is only *read* inside the graph: the new token attends to the cached slots plus
  itself (its own key/value held apart, combined in one softmax), and returns its keys/values,
  which `DecodeStep` writes into the cache (or its window, fast/window.py) afterwards.

So one compiled graph serves every step of a decoding loop. The result equals the eager step
up to float rounding (~2e-6 on hidden states at the default size; tests compare the greedy
outputs).

Two compilers (`DecodeStep(model, backend=...)`):
- "aoti" (the default): the step is exported (`torch.export`) and compiled ahead of time by
  AOTInductor into a shared library, loaded in this process, two per (vocabulary slice,
  dtypes, device): one for batches of up to 8 rows, one for 9 to 256 (rows are a dynamic
  dimension); the number of cache slots is dynamic too, and each step reads only a window of
  the cache's first slots (fast/window.py), not its whole capacity. Libraries are kept on disk
  between processes (`library_cache`, keyed by torch's version, the CPU's ISA, the graph and
  the weights). A call runs the generated C++ directly: no Dynamo guards and no Python
  wrapper around each kernel, which makes it several times faster than eager decoding and
  than `torch.compile` (docs/fast.md).
- "inductor": `torch.compile(fullgraph, dynamic=False)`, guarded by Dynamo at every call, one
  graph per (rows, capacity); caches are made in capacities of multiples of 64 (`capacity`).
Both freeze the weights into the compiled code (prepacked on CPU), so a compiled step is for
inference only and stale once the weights change. Under autocast (eval.precision = "bf16") the
AOTInductor library is traced from a copy of the weights in autocast's precision and computes
the step in it (the model keeps its float32 weights; the caches are then bf16 too,
`Backbone.new_cache`); its outputs may differ from float32 ones, as autocast's do. If
AOTInductor fails (an older torch, an unsupported op), the step falls back to `torch.compile`,
and from there to eager, each time with a warning that says why.

Letters: r rows, l layers, h query heads, g kv heads, m cache slots, e head dim, d model dim.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

from unimm.fast import kernels
from unimm.fast.pool import BufferPool
from unimm.fast.steps import static_fill, static_step, step_bias
from unimm.fast.window import WINDOW, Window
from unimm.model.cache import KVCache
from unimm.model.layers import autocast_dtype


def _direct(package):
    """A loaded AOTInductor package as a plain function of the step's five tensors: its
    loader's `boxed_run` on them, without the package's per-call pytree work (it parses the
    input and output specs from JSON at every call, a noticeable share of a small step:
    docs/fast.md). The package itself where its loader has no `boxed_run` (another torch)."""
    loader = getattr(package, "loader", None)
    if not callable(getattr(loader, "boxed_run", None)):
        return package
    return lambda *tensors: tuple(loader.boxed_run(list(tensors)))


class _Step(torch.nn.Module):
    """static_step with the vocabulary slice fixed, as a module for torch.export."""

    def __init__(self, model, lo: int, hi: int, native: bool):
        super().__init__()
        self.model, self.lo, self.hi, self.native = model, lo, hi, native

    def forward(self, tok, pos, bias, k_cache, v_cache):
        return static_step(self.model, tok, pos, bias, k_cache, v_cache, self.lo, self.hi,
                           self.native)


class _Fill(torch.nn.Module):
    """static_fill as a module for torch.export."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x, pos, mask):
        return static_fill(self.model, x, pos, mask)


BACKENDS = ("aoti", "inductor")


SMALL = 8    # row counts up to this share one library (dynamic rows, autotuned GEMMs) ...
LARGE = 256  # ... and row counts above it up to this another (dynamic rows, oneDNN GEMMs)
# The prompt fill's library: weights frozen (prepacked for oneDNN on CPU) and its buffers
# (intermediates and outputs) planned into one pool allocated per call. Without the pool, its
# many intermediates, all freed at the end of a call, took the heap above glibc's trim
# threshold: thousands of page faults per batch-16 answer fill, which ate its gain over the
# eager fill (docs/fast.md).
FILL_OPTIONS = {"freezing": True, "memory_planning": True, "memory_pool": "combined"}


def aoti_options(device: torch.device, small: bool) -> dict:
    """Inductor settings for the ahead-of-time step. For small batches on CPU, `max_autotune`
    with inductor's C++ GEMM template: the projections become generated micro-kernels over
    prepacked weights, timed against ATen / oneDNN's at compile time (the faster is kept):
    much faster steps at 1-2 rows for a longer compile; at 16 and 32 rows no gain (the
    measurements: docs/fast.md), so larger batches keep oneDNN."""
    opts = {"freezing": True}
    if device.type == "cpu" and small:
        opts.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN",
                    max_autotune_report_choices_stats=False, autotune_num_choices_displayed=0)
    return opts


def library_cache() -> Path | None:
    """Where compiled step libraries are kept between processes: $UNIMM_CACHE_DIR/decode, else
    ~/.cache/unimm/decode; UNIMM_CACHE_DIR set to "" turns the cache off."""
    root = kernels.cache_root()
    return None if root is None else root / "decode"


def library_key(program, options: dict, device: torch.device) -> str:
    """What a compiled library depends on: torch's version, the CPU's vector ISA (the code is
    generated for it), the inductor settings, the exported graph (its code and input specs)
    and every weight frozen into it (bytes)."""
    h = hashlib.sha256()
    for part in (torch.__version__, device.type, torch.backends.cpu.get_cpu_capability(),
                 repr(sorted(options.items())), program.graph_module.code,
                 str(program.graph_signature), str(program.range_constraints)):
        h.update(part.encode())
    for name, t in sorted({**program.state_dict, **program.constants}.items()):
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


class DecodeStep:
    """`static_step` compiled (AOTInductor: see `_runner` for what one library serves;
    torch.compile: once per rows x capacity x vocabulary slice) and applied to a KVCache:
    computes the step, writes the new keys/values at `start`, advances `cache.length`,
    returns the logits."""

    def __init__(self, model, backend: str = "aoti"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown decoding compiler {backend!r}; choose one of "
                             f"{', '.join(BACKENDS)}")
        self.model = model
        self.backend = backend
        self.failed = None       # why compiling failed (then every step runs eagerly)
        self.aoti_failed = None  # why AOTInductor failed (then torch.compile is used)
        self._aoti = {}          # shape key -> loaded AOTInductor runner
        self._fills = {}         # (dtype, device) -> loaded AOTInductor prompt-fill runner
        self.fill_failed = None  # why compiling the prompt fill failed (then fills run eagerly)
        self._dir = None         # where the compiled libraries live (removed with this object)
        # freezing: weights become constants of the graph (prepacked for oneDNN on CPU), so
        # the compiled step is for inference only and is stale once the weights change
        self.fn = torch.compile(lambda *a: static_step(model, *a), fullgraph=True,
                                dynamic=False, options={"freezing": True})

    def capacity(self, max_len: int) -> int:
        """The cache capacity to make for `max_len` slots: any for AOTInductor (slots are
        dynamic), multiples of 64 for torch.compile (one graph per capacity: few shapes)."""
        return 64 * -(-max_len // 64) if self.backend == "inductor" else max_len

    def _lowered(self, dtype: torch.dtype):
        """A copy of the model with its parameters in `dtype` (buffers, e.g. the rotary
        tables, keep theirs), to trace a step in that precision; the compiled library keeps
        its own copy of the weights, so this one is dropped after compiling. The copy leaves
        out this step (the model's decoder, its backbone's filler) and the buffer pools the
        model's samplers keep."""
        memo = {id(self): None}
        for m in self.model.modules():
            for v in m.__dict__.values():
                if isinstance(v, BufferPool) or getattr(v, "__self__", None) is self:
                    memo[id(v)] = None
        low = copy.deepcopy(self.model, memo)
        for p in low.parameters():
            p.data = p.data.to(dtype)
        return low

    def _runner(self, args: tuple, lo: int, hi: int, low: torch.dtype | None = None):
        """The AOTInductor library for these inputs, compiled on first use: per (vocabulary
        slice, dtypes, device), one for batches of up to SMALL rows (traced and tuned at 2 rows;
        a 1-row library ran slower than this one does at 1 row) and one for SMALL + 1 to LARGE
        rows with oneDNN's GEMMs (kernels tuned at 2 rows lost to them at 32; at 32 rows this
        library's step was as fast as one compiled for exactly 32), whose attention is the
        native CPU kernel (`kernels.decode_attention`, where it builds; the small library keeps
        inductor's, since calling an op from the library costs more than it saves at 1-2 rows;
        figures in docs/fast.md). Rows and cache slots are dynamic in both: steps read a
        window of the cache (fast/window.py). `low`: a lower precision to compute in
        (weights, activations and the new keys/values in it; see `__call__`)."""
        tok, pos, bias, k_cache, v_cache = args
        r = tok.shape[0]
        small = r <= SMALL
        # the compute dtype is the mask's (`__call__` builds it in `low` or the weights' dtype)
        key = (small, lo, hi, k_cache.dtype, bias.dtype, str(tok.device))
        run = self._aoti.get(key)
        if run is None:
            m = torch.export.Dim("slots", min=2, max=self.model.cfg.max_seq_len + WINDOW)
            rows = (torch.export.Dim("rows", min=1, max=SMALL) if small
                    else torch.export.Dim("rows", min=SMALL + 1, max=LARGE))
            re = 2 if small else 24       # traced with 2 or 24 rows (1 would be specialised)
            me = min(40, self.model.cfg.max_seq_len + WINDOW)   # and 40 slots (at most the
            #                               largest window): sizes no other dimension has
            l, _, g, _, e = k_cache.shape
            example = (tok[:1].expand(re, -1).contiguous(),
                       pos[:1].expand(re, -1, -1).contiguous(),
                       bias.new_zeros(re, me),
                       k_cache.new_zeros(l, re, g, me, e), v_cache.new_zeros(l, re, g, me, e))
            dynamic = ({0: rows}, {0: rows}, {0: rows, 1: m}, {1: rows, 3: m},
                       {1: rows, 3: m})
            model = self.model if low is None else self._lowered(low)
            self._aoti[key] = run = self._build(_Step(model, lo, hi, native=not small),
                                                example, dynamic,
                                                aoti_options(tok.device, small),
                                                f"step{len(self._aoti)}", tok.device)
        return run

    def fill(self, x: Tensor, pos: Tensor, mask: Tensor | None, cache: KVCache) -> Tensor | None:
        """A prompt fill through an AOTInductor library (`static_fill`): what
        `Backbone.forward(x, pos, mask, cache, start=0, last=True)` computes, with the keys and
        values written into cache slots [0, t); the last token's hidden state (b, 1, d). None
        where it does not apply (another compiler, autocast, not float32 on a CPU, more than
        LARGE rows, one token) or compiling failed: the caller then fills eagerly. One library
        per (dtype, device): rows and tokens are dynamic. `mask`: Bool (b|1, 1, t, t), or None
        for causal. The same cache within 1e-6, some 10-30 % faster than the eager fill
        (docs/fast.md). The backbone's `filler` (`Backbone.forward` calls it)."""
        b, t, _ = x.shape
        if (self.backend != "aoti" or self.fill_failed is not None or t < 2 or b > LARGE
                or x.device.type != "cpu" or x.dtype != torch.float32
                or cache.k.dtype != x.dtype or autocast_dtype("cpu") is not None
                or next(self.model.parameters()).dtype != x.dtype):
            return None
        if mask is None:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        mask = mask.expand(b, 1, t, t).contiguous()
        key = (x.dtype, str(x.device))
        try:
            run = self._fills.get(key)
            if run is None:
                run = self._fills[key] = self._fill_library(x, pos, mask)
            h, k, v = run(x.contiguous(), pos.contiguous(), mask)
        except Exception as err:   # an older torch, an unsupported op, ...: eager fills
            self.fill_failed = kernels.reason(err)
            warnings.warn(f"compiled prompt fills unavailable, filling eagerly "
                          f"({self.fill_failed})")
            return None
        cache.flush()
        cache.k[:, :, :, :t] = k
        cache.v[:, :, :, :t] = v
        cache.length = t
        return h

    def _fill_library(self, x: Tensor, pos: Tensor, mask: Tensor):
        """The AOTInductor library of `static_fill` for x's dtype and device: rows 1 to LARGE
        and tokens 2 to max_seq_len dynamic (traced at 3 rows x 37 tokens), oneDNN's GEMMs
        on prepacked weights, buffers from one pool per call (FILL_OPTIONS); from the on-disk
        cache when it is there."""
        rows = torch.export.Dim("rows", min=1, max=LARGE)
        tokens = torch.export.Dim("tokens", min=2, max=self.model.cfg.max_seq_len)
        re, te = 3, min(37, self.model.cfg.max_seq_len)   # sizes no other dimension has
        example = (x.new_zeros(re, te, x.shape[2]), pos.new_zeros(re, te, 3),
                   mask.new_ones(re, 1, te, te).tril())
        dynamic = ({0: rows, 1: tokens}, {0: rows, 1: tokens}, {0: rows, 2: tokens, 3: tokens})
        return self._build(_Fill(self.model), example, dynamic, FILL_OPTIONS,
                           f"fill{len(self._fills)}", x.device)

    def _build(self, module, example: tuple, dynamic: tuple, options: dict, name: str,
               device: torch.device):
        """`module` exported at `example` with these dynamic shapes and compiled by
        AOTInductor with `options` (or loaded from the on-disk cache, `_load_or_compile`) into
        this step's temporary directory as `name`.pt2; returned as a plain function
        (`_direct`)."""
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="unimm-decode-")
        path = Path(self._dir.name) / f"{name}.pt2"
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(module, example, strict=False, dynamic_shapes=dynamic)
            return _direct(self._load_or_compile(program, options, path, device))

    @staticmethod
    def _load_or_compile(program, options: dict, path: Path, device: torch.device):
        """The library of `program` from the on-disk cache (`library_cache`), else compiled
        (about a minute on a CPU) and stored there (written, then renamed into place)."""
        store = library_cache()
        cached = None
        if store is not None:
            cached = store / f"{library_key(program, options, device)}.pt2"
            if cached.is_file():
                try:
                    return torch._inductor.aoti_load_package(str(cached))
                except Exception:   # noqa: BLE001 - unreadable or partial: compile it again
                    pass
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs=options)
        if cached is not None:
            try:
                store.mkdir(parents=True, exist_ok=True)
                tmp = cached.with_suffix(f".{os.getpid()}.tmp")
                shutil.copyfile(path, tmp)
                os.replace(tmp, cached)
            except OSError as err:  # a read-only home, a full disk: run without the cache
                warnings.warn(f"could not store the compiled decoding step in {store} ({err})")
        return torch._inductor.aoti_load_package(str(path))

    def __call__(self, tok: Tensor, pos: Tensor, slots: Tensor, cache: KVCache,
                 start: int, lo: int, hi: int) -> Tensor:
        if not 0 < start <= cache.length or start >= cache.max_len:
            raise ValueError(f"start={start} must follow the cache's filled slots "
                             f"(length {cache.length}, capacity {cache.max_len})")
        if start >= self.model.cfg.max_seq_len:
            raise ValueError(f"position index {start} reaches max_seq_len="
                             f"{self.model.cfg.max_seq_len}")
        r, m = cache.k.shape[1], cache.k.shape[3]
        if tok.shape != (r, 1) or pos.shape != (r, 1, 3) or slots.shape != (r, m):
            raise ValueError(f"decoding step inputs tok {tuple(tok.shape)}, pos "
                             f"{tuple(pos.shape)}, slots {tuple(slots.shape)} do not fit a "
                             f"cache of {r} rows x {m} slots")
        out = win = None
        # under autocast (a run's eval.precision = "bf16"): a library traced with the weights
        # in autocast's precision, as a bf16 model would run (norms and rotary upcast inside,
        # logits returned in float32; faster than the float32 library: docs/fast.md)
        low = autocast_dtype(tok.device.type)
        dtype = next(self.model.parameters()).dtype
        if low == dtype:
            low = None
        if self.backend == "aoti" and self.failed is None and r <= LARGE:  # else: eagerly
            try:   # the library assumes the contiguous layout it was traced with
                win = Window.of(cache, start)
                w = win.k.shape[3]
                args = (tok.contiguous(), pos.contiguous(),
                        step_bias(slots[:, :w], start, low or dtype), win.k, win.v)
                run = self._runner(args, lo, hi, low)
                if low is None:
                    out = run(*args)
                else:   # the library's own precision, whatever autocast would do to its ops
                    with torch.autocast(tok.device.type, enabled=False):
                        out = run(*args)
            except Exception as err:   # an older torch, an unsupported op, ...: torch.compile
                win = None
                self.aoti_failed = kernels.reason(err)
                self.backend = "inductor"
                warnings.warn(f"AOTInductor decoding unavailable, using torch.compile "
                              f"({self.aoti_failed})")
        if out is None:           # the steps below read and write k, v themselves
            cache.flush()
        if out is None and self.backend == "inductor" and self.failed is None:
            try:
                out = self.fn(tok, pos, step_bias(slots, start, dtype), cache.k, cache.v, lo,
                              hi)
            except Exception as err:   # no C++ compiler, an unsupported op, ...: run eagerly
                self.failed = kernels.reason(err)
                warnings.warn(f"compiled decoding unavailable, decoding eagerly ({self.failed})")
        if out is not None:
            logits, k, v = out
        else:
            logits, k, v = static_step(self.model, tok, pos, step_bias(slots, start, dtype),
                                       cache.k, cache.v, lo, hi)
        k, v = k.to(cache.k.dtype), v.to(cache.v.dtype)
        dest = (cache.k, cache.v) if win is None else (win.k, win.v)   # a window: synced later
        dest[0].narrow(3, start, 1).copy_(k)                  # (3x faster than index_copy_)
        dest[1].narrow(3, start, 1).copy_(v)
        if win is not None:
            win.wrote(start)
        cache.length = start + 1
        return logits

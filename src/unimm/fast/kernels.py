"""Native CPU kernels, compiled on first use on the machine that runs them (like inductor's own
code: the same C++ compiler, torch's headers, the CPU's vector ISA) and kept in the on-disk
cache next to the compiled decoding steps.

One kernel so far: `decode_attention` (csrc/decode_attention.cpp), the attention of a decoding
step over its key/value window, which the compiled steps (fast/decode.py) call instead of the
attention inductor generates: at many rows a step's attention is bound by reading the keys and
values from memory, and the kernel reads them in two plain streams (why, in the source; its
speed against inductor's and against a plain read: docs/fast.md).

Where it cannot be built (no C++ compiler or ninja, another platform) `decode_attention()`
returns None once with a warning, and the steps keep inductor's attention: the same results
within float32 rounding, more slowly. UNIMM_NATIVE_KERNELS=0 turns the kernel off.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "decode_attention.cpp"
# vector-ISA flags by torch's own CPU capability (what at::vec compiles to; as inductor does)
ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl",
               "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}

_state: dict = {}   # "op": the loaded op (or None), "failed": why building it failed


def cache_root() -> Path | None:
    """Where compiled code is kept between processes: $UNIMM_CACHE_DIR, else ~/.cache/unimm;
    UNIMM_CACHE_DIR set to "" turns the cache off."""
    root = os.environ.get("UNIMM_CACHE_DIR")
    if root == "":
        return None
    return Path(root) if root else Path.home() / ".cache" / "unimm"


def reason(err: Exception) -> str:
    """Why compiling something failed, in one line (its first, at most 200 characters)."""
    return f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"


def _flags() -> list[str]:
    return ["-O3", *ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), [])]


def library_name() -> str:
    """The kernel library's name: a digest of its source, torch's version and the flags."""
    h = hashlib.sha256()
    for part in (SOURCE.read_text(), torch.__version__, " ".join(_flags())):
        h.update(part.encode())
    return f"unimm_kernels_{h.hexdigest()[:16]}"


STALE_LOCK_S = 600   # a build lock older than this was left by a killed build


def _build() -> object:
    """Compile (or load from the cache) the kernel library and return its op. A lock left by
    a build that was killed is removed (torch would wait on it forever), and a cached library
    that does not load is built again once."""
    try:
        return torch.ops.unimm.decode_attention   # already loaded in this process
    except (AttributeError, RuntimeError):
        pass
    from torch.utils import cpp_extension
    name = library_name()
    root = cache_root()
    if root is None:
        _state["tmp"] = tempfile.TemporaryDirectory(prefix="unimm-kernels-")
        build = Path(_state["tmp"].name)
    else:
        build = root / "kernels" / name
    lock = build / "lock"
    if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
        lock.unlink(missing_ok=True)
    path = os.environ.get("PATH", "")
    try:   # the ninja that the `ninja` package installs, also where its bin/ is not on PATH
        import ninja
        os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, path])
    except ImportError:
        pass
    try:
        for attempt in (0, 1):
            build.mkdir(parents=True, exist_ok=True)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cpp_extension.load(name, [str(SOURCE)], extra_cflags=_flags(),
                                       build_directory=str(build), is_python_module=False,
                                       verbose=False, with_cuda=False)
                break
            except Exception:
                if attempt or root is None:
                    raise
                shutil.rmtree(build, ignore_errors=True)    # a damaged cache: build anew
    finally:
        os.environ["PATH"] = path
    return torch.ops.unimm.decode_attention


def decode_attention():
    """The compiled `torch.ops.unimm.decode_attention` op, built on first use; None (with a
    warning, once per process) where it cannot be built or UNIMM_NATIVE_KERNELS=0."""
    if "op" in _state:
        return _state["op"]
    if os.environ.get("UNIMM_NATIVE_KERNELS", "1") == "0":
        return None
    try:
        op = _build()
    except Exception as err:   # noqa: BLE001 - no compiler, no ninja, another platform
        op = None
        _state["failed"] = reason(err)
        warnings.warn(f"native decode attention unavailable, compiled steps use inductor's "
                      f"attention ({_state['failed']})")
    _state["op"] = op
    return op

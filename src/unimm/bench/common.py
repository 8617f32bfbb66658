"""Running one measurement in a fresh interpreter, as every multi-process `unimm bench` does
(`in_child`, `python -m unimm.bench.common spec.json`): no shared heap, allocator cache or
thread pool between measurements, and the child's thread count set before torch starts.

The rest of the protocol lives beside it: bench/timing.py (warm-up, repeated timed runs,
median and spread, peak memory), bench/machine.py (what the machine can do, measured) and
utils/machine.py (the conditions recorded next to every number, thread set-up).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ..utils.machine import thread_env, use_threads


def import_target(target: str):
    """"module:function" -> the function."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def in_child(target: str, spec: dict, work: Path, label: str) -> dict:
    """Run `target` ("module:function") on `spec` in a fresh interpreter with
    spec["threads"] torch threads; return its dict. Raises RuntimeError with the tail of the
    child's stderr if it fails."""
    fd, path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=Path(work))
    os.close(fd)
    path = Path(path)
    out = path.with_suffix(".out.json")
    path.write_text(json.dumps({"target": target, "spec": spec, "out": str(out)}))
    env = thread_env(spec["threads"], TQDM_DISABLE="1")
    print(f"$ python -m unimm.bench.common  # {label}", flush=True)
    r = subprocess.run([sys.executable, "-m", "unimm.bench.common", str(path)], env=env,
                       stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise RuntimeError(f"{label} failed with exit code {r.returncode}: "
                           f"{r.stderr.strip()[-1500:]}")
    return json.loads(out.read_text())


def _child_main(spec_path: str) -> None:
    job = json.loads(Path(spec_path).read_text())
    use_threads(job["spec"]["threads"])
    row = import_target(job["target"])(job["spec"])
    Path(job["out"]).write_text(json.dumps(row))


if __name__ == "__main__":
    _child_main(sys.argv[1])

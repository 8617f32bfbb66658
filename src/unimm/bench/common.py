"""Benchmark protocol shared by every `unimm bench`: warm-up, repeated timed runs, median and
spread, the conditions (threads, load, machine) recorded next to the numbers, and running one
measurement in a fresh interpreter (`in_child`, `python -m unimm.bench.common spec.json`)."""

from __future__ import annotations

import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ..utils.machine import conditions, describe  # noqa: F401 - the benches' import of them


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Run fn() warmup + repeats times; return median/min/max wall seconds of the timed runs,
    the raw times, and the median CPU seconds of this process (less sensitive than wall time
    to other jobs on a shared machine; equal to wall time for a single-threaded job that
    never waits)."""
    for _ in range(warmup):
        fn()
    ts, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        ts.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
            "repeats": repeats, "times_s": ts, "cpu_median_s": statistics.median(cpu)}


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
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "TQDM_DISABLE": "1"}
    print(f"$ python -m unimm.bench.common  # {label}", flush=True)
    r = subprocess.run([sys.executable, "-m", "unimm.bench.common", str(path)], env=env,
                       stdout=sys.stdout, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise RuntimeError(f"{label} failed with exit code {r.returncode}: "
                           f"{r.stderr.strip()[-1500:]}")
    return json.loads(out.read_text())


def _child_main(spec_path: str) -> None:
    import torch
    job = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(job["spec"]["threads"])
    row = import_target(job["target"])(job["spec"])
    Path(job["out"]).write_text(json.dumps(row))


if __name__ == "__main__":
    _child_main(sys.argv[1])

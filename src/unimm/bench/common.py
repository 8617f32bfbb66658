"""Benchmark protocol shared by every `unimm bench`: warm-up, repeated timed runs, median and
spread, and the conditions (threads, load, machine) recorded next to the numbers."""

from __future__ import annotations

import os
import platform
import statistics
import time
from datetime import datetime, timezone


def conditions() -> dict:
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    import torch
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def describe(start: dict, end: dict) -> str:
    """One line for a results file: machine, cores, load at start and end, torch, date."""
    return (f"{start['machine']}, {start['cpu_count']} cores, load {start['loadavg_1_5_15']} at "
            f"start, {end['loadavg_1_5_15']} at end, torch {start['torch']}, {start['date']}")


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

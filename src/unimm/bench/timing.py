"""Timing and memory, the way every `unimm bench` measures: warm-up, repeated timed runs,
median and spread; CUDA synchronised before the clock stops; peak memory over a block.

Notable choices:
- `timeit` also records the process's CPU time: on a shared machine it is less sensitive to
  other jobs than wall time, and equal to it for a single-threaded job that never waits.
- Peak memory on a CPU is the process's max RSS (`resource.getrusage`: process-wide, and a
  high-water mark, so measurements run from small to large footprint); on CUDA it is
  `torch.cuda.max_memory_allocated`, reset per block.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time

import torch


def timeit(fn, repeats: int = 5, warmup: int = 1) -> dict:
    """Run fn() warmup + repeats times; return median/min/max wall seconds of the timed runs,
    the raw times, and the median CPU seconds of this process."""
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


def sync(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, dev, repeats: int, warmup: int = 1) -> dict:
    """timeit() with the device synchronised before the clock stops."""
    def run():
        fn()
        sync(dev)
    sync(dev)
    return timeit(run, repeats=repeats, warmup=warmup)


def max_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 2 ** 10     # bytes vs KiB


def memory_now(dev) -> float:
    """MiB allocated on the GPU now, or the process's max RSS so far (CPU)."""
    return torch.cuda.memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else max_rss_mb()


def peak_rss_mb(pid: int) -> float | None:
    """Another process's peak resident memory (Linux /proc VmHWM), or None."""
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory over a block: CUDA max_memory_allocated, or the process's max RSS."""

    def __init__(self, dev):
        self.dev, self.result = dev, {}

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.start = torch.cuda.memory_allocated(self.dev)
        else:
            self.start = max_rss_mb()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            peak = torch.cuda.max_memory_allocated(self.dev) / 2 ** 20
            self.result = {"peak_mb": peak, "above_start_mb": peak - self.start / 2 ** 20,
                           "memory_kind": "cuda max_memory_allocated"}
        else:
            peak = max_rss_mb()
            self.result = {"peak_mb": peak, "above_start_mb": peak - self.start,
                           "memory_kind": "process max RSS (process-wide)"}
        return False

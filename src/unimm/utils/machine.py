"""The machine a number was measured on, and how many threads a process uses.

`conditions()` is recorded next to every benchmark and evaluation result (date, processor,
cores, threads, load average, versions): a number means little without the load it was taken
under. Thread counts are set explicitly, never inherited: `use_threads` in this process,
`thread_env` for a child process (OMP_NUM_THREADS is read when torch starts, so a child needs
it in its environment, not a call).
"""

from __future__ import annotations

import os
import platform
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


def use_threads(n: int) -> None:
    """torch's intra-op threads in this process."""
    import torch
    torch.set_num_threads(n)


def thread_env(n: int, **extra: str) -> dict[str, str]:
    """This process's environment for a child that computes on `n` threads (plus `extra`)."""
    return {**os.environ, "OMP_NUM_THREADS": str(n), **extra}

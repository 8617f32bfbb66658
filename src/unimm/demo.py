"""`unimm demo`: a report a person can open, made in well under a minute on 2 CPU cores.

On the default model (or any run): the run's world shows it at work on fresh test items
(World.demo: ShapesWorld answers questions about fresh test scenes and captions them, each
answer checked against the truth, draws a grid of prompts with the judge's verdict under each
image, and edits images). Everything lands in report.md + PNGs.
"""

from __future__ import annotations

import time
from pathlib import Path

from .pipeline import Pipeline
from .utils.io import write_text


def run_demo(out: str | Path, run=None, seed: int | None = None, n: int = 8) -> Path:
    t_start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(run)
    lines = pipe.world.demo(pipe, out, seed, n, label=str(run or "default model"))
    lines += ["", f"Made in {time.perf_counter() - t_start:.1f} s."]
    return write_text(out / "report.md", "\n".join(lines) + "\n")

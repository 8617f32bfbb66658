"""`unimm demo`: a report a person can open.

Today it shows the world and its judge (no trained model ships yet): captioned scenes with
questions and answers, edits, GenEval-style prompts with their target scenes, and the judge
reading clean and perturbed renders. The model demo replaces the middle sections once a default
model ships.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .data.preview import preview_grid
from .data.shapes import render
from .data.splits import ShapesWorld
from .data.text import caption
from .eval.judge import judge_batch
from .eval.perturb import perturb
from .eval.selftest import selftest
from .utils.io import write_text
from .utils.plot import image_grid


def run_demo(out: str | Path) -> Path:
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for task in ("caption", "edit", "t2i"):
        preview_grid("shapes", "test", task, 12 if task == "edit" else 16, out / f"{task}.png")

    world = ShapesWorld("test")
    rng = np.random.default_rng(0)
    scenes = [world.scene(i) for i in range(16)]
    noisy = [perturb(render(s), "mixed", rng) for s in scenes]
    parsed = judge_batch(np.stack(noisy))
    ok = [p.key() == s.key() for p, s in zip(parsed, scenes)]
    image_grid(noisy, [("OK  " if k else "WRONG  ") + caption(p) for p, k in zip(parsed, ok)],
               out / "judge.png", colors=["green" if k else "red" for k in ok],
               title="the judge reading perturbed renders")
    st = selftest(1000, seed=0, stress=False)
    (out / "selftest.json").write_text(json.dumps(st, indent=2))
    lines = [
        "# unimm demo",
        "",
        "No trained model ships yet: this report shows the world every model is judged in.",
        "",
        "## Scenes, captions and questions (test split)",
        "![captions](caption.png)",
        "",
        "## Editing instructions (source | target)",
        "![edits](edit.png)",
        "",
        "## Text-to-image prompts and their target scenes",
        "![t2i](t2i.png)",
        "",
        "## The judge on perturbed renders",
        "![judge](judge.png)",
        "",
        f"Judge self-test on 1,000 test scenes: clean exact {st['clean_exact']:.4f}, "
        f"perturbed exact {st['perturbed_exact']:.4f}, "
        f"{st['ms_per_image_single']:.2f} ms per image.",
        "",
        f"Made in {time.perf_counter() - t0:.1f} s.",
    ]
    return write_text(out / "report.md", "\n".join(lines) + "\n")

"""ShapesWorld's part of `unimm demo`: questions and captions about fresh test scenes (each
answer checked against the truth), a grid of prompts (full scenes, GenEval-style prompts and
never-drawn colour-shape pairs) with the judge's verdict under each image, and edits."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np

from ..utils.plot import image_grid, side_by_side
from .geneval import CATEGORIES, sample_prompt
from .shapes import HOLDOUT_PAIRS
from .shapes_judge import judge_batch
from .splits import CAPTION_PROMPT, SPLIT_SIZE, ShapesWorld
from .text import EDIT_KINDS, QUESTION_KINDS, caption, normalize_answer, parse_caption

GREEN, RED = "green", "red"


def shapes_demo(pipe, world: ShapesWorld, out: Path, seed: int | None, n: int,
                label: str) -> list[str]:
    """Markdown lines of the report; PNGs written into `out` (`pipe`: answer / draw)."""
    seed = int.from_bytes(os.urandom(3), "little") if seed is None else seed
    rng = random.Random(seed)
    start = rng.randrange(SPLIT_SIZE - 10 * n)
    lines = [f"# unimm demo: `{label}`", "",
             f"Fresh test scenes (seed {seed}, test indices from {start}); every answer and image "
             "below is checked by the exact judge.", ""]

    # 1. Questions and captions about fresh test scenes
    exs = [world.vqa_example(start + i, QUESTION_KINDS[(start + i) % len(QUESTION_KINDS)])
           for i in range(2 * n)]
    preds = pipe.answer([e.image for e in exs], [e.text for e in exs])
    ok = [normalize_answer(p) == normalize_answer(e.target_text) for p, e in zip(preds, exs)]
    caps = pipe.answer([e.image for e in exs[:n]], [CAPTION_PROMPT] * n)
    cap_ok = [parse_caption(c) == list(e.scene.key()) for c, e in zip(caps, exs[:n])]
    image_grid([e.image for e in exs], [f"Q: {e.text}\nA: {p}" + ("" if k else f"\n(truth: {e.target_text})")
                                        for e, p, k in zip(exs, preds, ok)],
               out / "questions.png", colors=[GREEN if k else RED for k in ok], wrap=26,
               title="questions about fresh test scenes")
    lines += ["## Questions about fresh test scenes", "", "![questions](questions.png)", "",
              "| kind | question | model | truth | |", "|---|---|---|---|---|"]
    lines += [f"| {e.kind} | {e.text} | {p} | {e.target_text} | {'✓' if k else '✗'} |"
              for e, p, k in zip(exs, preds, ok)]
    lines += ["", f"{sum(ok)}/{len(ok)} answers right.", "", "## Captions", "",
              "| caption | scene-correct |", "|---|---|"]
    lines += [f"| {c} | {'✓' if k else '✗'} |" for c, k in zip(caps, cap_ok)]
    lines += ["", f"{sum(cap_ok)}/{len(cap_ok)} captions describe their scene exactly.", ""]

    # 2. Text-to-image: full scenes, GenEval-style prompts, hold-out pairs
    full = [world.t2i_example(start + i, geneval=False) for i in range(n)]
    gen = [sample_prompt(rng, CATEGORIES[i % len(CATEGORIES)]) for i in range(6)]
    held = sorted(HOLDOUT_PAIRS)[:2]
    prompts = [e.text for e in full] + [p.text for p in gen] + [f"a large {c} {s} in the center" for c, s in held]
    imgs = pipe.draw(prompts)
    judged = judge_batch(np.stack(imgs))
    ok = [e.target_scene.key() == j.key() for e, j in zip(full, judged[:n])]
    ok += [p.satisfied_by(j) for p, j in zip(gen, judged[n:n + 6])]
    ok += [any((o.color, o.shape) == pair and o.cell == 4 for o in j.objects)
           for pair, j in zip(held, judged[n + 6:])]
    labels = ["full scene"] * n + [p.category for p in gen] + ["hold-out pair"] * len(held)
    image_grid(imgs, [f"[{lab}] {p}\njudge: {caption(j)}" for lab, p, j in zip(labels, prompts, judged)],
               out / "generate.png", colors=[GREEN if k else RED for k in ok], wrap=30,
               title="text-to-image (green: the judge agrees with the prompt)")
    lines += ["## Text-to-image", "", "![generate](generate.png)", "",
              f"{sum(ok)}/{len(ok)} images satisfy their prompt (hold-out pairs were never drawn in "
              "training).", ""]

    # 3. Editing
    eds = [world.edit_example(start + i, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n)]
    outs = pipe.draw([e.text for e in eds], [e.image for e in eds])
    judged = judge_batch(np.stack(outs))
    ok = [e.target_scene.key() == j.key() for e, j in zip(eds, judged)]
    image_grid([side_by_side(e.image, o) for e, o in zip(eds, outs)], [e.text for e in eds],
               out / "edit.png", ncols=4, colors=[GREEN if k else RED for k in ok], wrap=36,
               title="editing: source | model output")
    lines += ["## Editing", "", "![edit](edit.png)", "", f"{sum(ok)}/{len(ok)} edits reach the "
              "target scene exactly."]
    return lines

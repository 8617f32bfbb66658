"""The judge's self-test: render fresh test scenes, judge clean and perturbed copies, report
exact-match rates, confusions and speed. Also a stress sweep with stronger perturbations, to
show where the judge stops being reliable (reported, not part of the bar)."""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np

from .shapes import Scene, render
from .splits import SPLIT_SIZE, ShapesWorld, WorldConfig
from . import perturb as P
from .shapes_judge import judge, judge_batch


def confusions(truth: list[Scene], judged: list[Scene]) -> dict:
    """Off-diagonal confusion counts per attribute, plus missed and spurious objects."""
    c = {"shape": Counter(), "color": Counter(), "size": Counter()}
    missed = spurious = 0
    for t, j in zip(truth, judged):
        for cell in range(9):
            a, b = t.at(cell), j.at(cell)
            if a is None and b is not None:
                spurious += 1
            elif a is not None and b is None:
                missed += 1
            elif a is not None:
                for attr in c:
                    if getattr(a, attr) != getattr(b, attr):
                        c[attr][f"{getattr(a, attr)}->{getattr(b, attr)}"] += 1
    out = {k: dict(v.most_common()) for k, v in c.items()}
    out.update(missed=missed, spurious=spurious)
    return out


def _exact(truth, judged) -> float:
    return float(np.mean([t.key() == j.key() for t, j in zip(truth, judged)]))


STRESS = {
    "noise_sigma20": lambda x, r: P._u8(P._noise(x, r, 20.0)),
    "noise_sigma35": lambda x, r: P._u8(P._noise(x, r, 35.0)),
    "blur_sigma1.0": lambda x, r: P._u8(P._blur(x, 1.0)),
    "pixels_5pct": lambda x, r: P._u8(P._pixels(x, r, 0.05)),
    "jpeg_q50": lambda x, r: P._u8(P._jpeg(x, 50)),
}


def selftest(n: int = 2000, image_size: int = 32, seed: int | None = None,
             stress: bool = True) -> dict:
    """Judge n fresh test scenes clean and perturbed (perturbations cycled over PERTURBATIONS).

    `seed` picks which test scenes (a random one is drawn and reported when None)."""
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    world = ShapesWorld("test", WorldConfig(image_size=image_size))
    start = (seed * n) % (SPLIT_SIZE - n)
    scenes = [world.scene(start + i) for i in range(n)]
    clean = np.stack([render(s) for s in scenes])
    rng = np.random.default_rng(seed)
    kinds = [P.PERTURBATIONS[i % len(P.PERTURBATIONS)] for i in range(n)]
    pert = np.stack([P.perturb(im, k, rng) for im, k in zip(clean, kinds)])

    t0 = time.perf_counter()
    j_clean = judge_batch(clean)
    t_batch = (time.perf_counter() - t0) / n
    j_pert = judge_batch(pert)
    m = min(n, 200)
    t0 = time.perf_counter()
    for im in clean[:m]:
        judge(im)
    t_single = (time.perf_counter() - t0) / m

    per_kind = {k: _exact([s for s, kk in zip(scenes, kinds) if kk == k],
                          [j for j, kk in zip(j_pert, kinds) if kk == k])
                for k in P.PERTURBATIONS}
    out = {
        "n": n, "image_size": image_size, "seed": seed, "test_indices": [start, start + n],
        "clean_exact": _exact(scenes, j_clean),
        "perturbed_exact": _exact(scenes, j_pert),
        "perturbed_by_kind": per_kind,
        "ms_per_image_single": 1e3 * t_single,
        "ms_per_image_batched": 1e3 * t_batch,
        "confusions_clean": confusions(scenes, j_clean),
        "confusions_perturbed": confusions(scenes, j_pert),
    }
    if stress:
        out["stress"] = {name: _exact(scenes, judge_batch(np.stack([f(im, rng) for im in clean])))
                         for name, f in STRESS.items()}
    return out

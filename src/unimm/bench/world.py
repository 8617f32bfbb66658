"""`unimm bench world`: how fast the world is made and judged (one process, one thread)."""

from __future__ import annotations

import numpy as np

from ..data.shapes import render, scene_from_seed
from ..data.splits import ShapesWorld
from ..data.shapes_judge import judge, judge_batch
from ..utils.machine import conditions, use_threads
from .timing import timeit


def bench_world(n: int = 20000, repeats: int = 5, image_size: int = 32) -> dict:
    use_threads(1)
    out = {"conditions": conditions(), "n": n, "image_size": image_size}

    def scenes():
        for i in range(n):
            render(scene_from_seed(i, image_size))
    t = timeit(scenes, repeats)
    out["scenes_per_s"] = {"median": n / t["median_s"], "min": n / t["max_s"], "max": n / t["min_s"]}

    w = ShapesWorld("train")
    m = n // 10

    def examples():
        for i in range(m):
            w.caption_example(i, style=None)
            w.vqa_example(i)
            w.edit_example(i)
    t = timeit(examples, repeats)
    out["caption+vqa+edit_examples_per_s"] = m / t["median_s"]

    imgs = np.stack([render(scene_from_seed(i, image_size)) for i in range(2000)])
    t = timeit(lambda: judge_batch(imgs), repeats)
    out["judge_ms_per_image_batched"] = 1e3 * t["median_s"] / len(imgs)
    t = timeit(lambda: [judge(im) for im in imgs[:300]], repeats)
    out["judge_ms_per_image_single"] = 1e3 * t["median_s"] / 300
    return out

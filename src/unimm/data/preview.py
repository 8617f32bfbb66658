"""Captioned example grids for people to look at (`unimm data preview`)."""

from __future__ import annotations

from ..utils.plot import image_grid, side_by_side
from .digits import Digits, prompt
from .splits import TASKS, ShapesWorld, WorldConfig


def preview_grid(dataset: str, split: str, task: str, n: int, out, image_size: int = 32,
                 start: int = 0):
    if dataset == "digits":
        d = Digits(split, image_size=image_size)
        idx = [(start + i) % len(d) for i in range(n)]
        return image_grid([d.image(i) for i in idx],
                          [prompt(d.label(i)) for i in idx], out,
                          title=f"digits / {split}")
    if dataset != "shapes":
        raise ValueError(f"unknown dataset {dataset!r}; known: shapes, digits")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    world = ShapesWorld(split, WorldConfig(image_size=image_size))
    images, caps = [], []
    for i in range(start, start + n):
        ex = world.example(i, task)
        if task == "caption":
            qa = world.vqa_example(i)
            images.append(ex.image)
            caps.append(f"{ex.target_text}\nQ: {qa.text}\nA: {qa.target_text}")
        elif task == "vqa":
            images.append(ex.image)
            caps.append(f"[{ex.kind}] {ex.text}\nA: {ex.target_text}")
        elif task == "t2i":
            images.append(ex.target_image)
            caps.append(f"[{ex.kind}] {ex.text}")
        else:
            images.append(side_by_side(ex.image, ex.target_image))
            caps.append(f"[{ex.kind}] {ex.text}")
    return image_grid(images, caps, out, ncols=4 if task == "edit" else None,
                      title=f"ShapesWorld / {split} / {task}", wrap=34 if task == "edit" else 28)

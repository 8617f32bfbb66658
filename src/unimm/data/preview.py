"""Captioned example grids for people to look at (`unimm data preview`)."""

from __future__ import annotations

from ..utils.plot import image_grid
from .splits import WorldConfig
from .worlds import DataConfig, make_world


def preview_grid(dataset: str, split: str, task: str, n: int, out, image_size: int = 32,
                 start: int = 0):
    """A grid of n examples of a task of a built-in world's split (WORLDS[dataset])."""
    world = make_world(DataConfig(dataset=dataset, world=WorldConfig(image_size=image_size)))
    images, captions, options = world.preview(split, task, n, start)
    return image_grid(images, captions, out, **options)

"""The world contract: what the rest of the library may ask of a dataset.

Every dataset is one `World` subclass listed in `WORLDS` (data/worlds.py), the way paradigms
are listed in `PARADIGMS`; the trainer, the tokenizer and encoder trainers, the evaluator, the
Pipeline, the demo and the CLI ask the world and never branch on a dataset's name (lm-eval's
task classes; torchtitan's dataset registry). A world is built from the run's data config
(`DataConfig`, data/worlds.py) and supplies:

- what it holds: `tasks` (those it has examples for: caption, vqa, t2i, edit), `image_size`,
  `accepts_gray` (greyscale input images read as grey RGB), and `task_weights()`, the run's
  task mixture restricted to its tasks;
- examples: `source(split)`, an index-addressable task source (`example(i, task)`, `tasks`,
  `corpus_start`) that training streams and evaluation read;
- text: `text_corpus(n)`, the strings the run's BPE is fitted on;
- images and the judge: `images(split)` (`image(i)`, the image tokenizer's training stream) and
  `read(images)`, what the world's judge sees in images (readings compared with ==; None when
  the world has no judge); `pairs(split)` / `split_size(split)` for contrastive training;
- evaluation: `eval_suites(split, cfg, quick)`, the items to ask a Pipeline and how to score
  the outputs (eval/evaluate.py runs them);
- for people: `preview(...)` (`unimm data preview`), `export(...)` (`unimm data export`) and
  `demo(...)` (`unimm demo`).

Nothing here imports a Pipeline: evaluation items and demos call the `answer` / `draw` of the
object they are given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

TASKS: tuple[str, ...] = ("caption", "vqa", "t2i", "edit")


@dataclass
class Suite:
    """Evaluation items of one kind and how to score what the Pipeline returns for them.

    `ask`: "answer" (`pipe.answer(images, texts)`) or "draw" (`pipe.draw(texts, images)`,
    editing when `images` are given). `score(outputs)` -> flat metrics; `speed`: also report
    `speed/<speed>` = items per second of the call; `samples(outputs, folder)` writes sample
    grids when the evaluation is asked for them."""

    ask: Literal["answer", "draw"]
    texts: list[str]
    images: list[np.ndarray] | None
    score: Callable[[list], dict[str, float]]
    speed: str | None = None
    samples: Callable[[list, Path], None] | None = None


def text_corpus(source, n: int) -> list[str]:
    """Every string the model reads or writes in n train examples per task of a source (fits
    the BPE): examples source.corpus_start .. + n - 1, an index range each source picks."""
    out = []
    for task in source.tasks:
        for i in range(n):
            e = source.example(source.corpus_start + i, task)
            out.append(e.text)
            if e.target_text:
                out.append(e.target_text)
    return out


def eval_count(n: int, cfg, quick: bool) -> int:
    """Items of an evaluation: all n, or the quick (periodic) share of them."""
    return max(1, int(round(n * cfg.quick_fraction))) if quick else n


class World:
    """One dataset (see the module notes). Subclasses set the class attributes and implement
    every method that raises NotImplementedError here."""

    name: ClassVar[str]
    accepts_gray: ClassVar[bool] = False

    def __init__(self, data):
        """`data`: the run's DataConfig (data/worlds.py)."""
        self.data = data

    # ---- config ----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, data) -> None:
        """ValueError for data options this world cannot honour (called by DataConfig)."""

    # ---- what it holds ---------------------------------------------------------------------
    @property
    def tasks(self) -> tuple[str, ...]:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        return self.data.world.image_size

    def task_weights(self) -> dict[str, float]:
        """The run's task mixture over this world's tasks (tasks of weight 0 dropped)."""
        w = {t: getattr(self.data, t) for t in TASKS if t in self.tasks}
        if any(x < 0 for x in w.values()) or sum(w.values()) <= 0:
            raise ValueError(f"task weights must be >= 0 with a positive sum, got {w}")
        return {k: x for k, x in w.items() if x > 0}

    # ---- examples and text -----------------------------------------------------------------
    def source(self, split: str):
        """The task source of a split: `example(i, task) -> Example`, `tasks`, and
        `corpus_start`, the first example index `text_corpus` reads."""
        raise NotImplementedError

    def text_corpus(self, n: int) -> list[str]:
        """The strings the run's BPE is fitted on (`text_corpus` of the train source)."""
        return text_corpus(self.source("train"), n)

    # ---- images and the judge --------------------------------------------------------------
    def images(self, split: str):
        """An image stream of a split for tokenizer training: `image(i)` for any i >= 0."""
        raise NotImplementedError

    def read(self, images: np.ndarray) -> list | None:
        """What the world's judge sees in (n, s, s, 3) uint8 images: one reading per image,
        compared with ==; None when the world has no judge."""
        return None

    def pairs(self, split: str) -> Callable[[int], tuple[np.ndarray, str, object]]:
        """i -> (image, description, key) for contrastive training; pairs with the same key
        show the same content."""
        raise NotImplementedError

    def split_size(self, split: str) -> int | None:
        """Distinct items in a split (None: as many as asked for)."""
        return None

    # ---- evaluation and people -------------------------------------------------------------
    def eval_suites(self, split: str, cfg, quick: bool) -> list[Suite]:
        """The evaluation of a split (`cfg`: the run's EvalConfig, counts per kind)."""
        raise NotImplementedError

    def preview(self, split: str, task: str, n: int, start: int = 0) -> tuple[list, list, dict]:
        """(images, captions, image_grid options) of n examples for a person to look at."""
        raise NotImplementedError

    def export(self, split: str, out_dir, n: int | None = None, overwrite: bool = False) -> Path:
        """Write a split as PNG files + manifest.jsonl (data/manifest.py); the manifest path."""
        raise ValueError(f"the {self.name} world has no export")

    def demo(self, pipe, out: Path, seed: int | None, n: int, label: str) -> list[str]:
        """Markdown lines of a report (PNGs written into `out`) showing a run on fresh items."""
        raise NotImplementedError

"""The real handwritten digits behind the world contract (data/world.py).

Tasks: caption ("the digit 7"), vqa ("What digit is this?" -> "seven") and t2i; no editing.
Greyscale input images are accepted (read as grey RGB). The judge is the independent SVM of
digits_judge.py; evaluation reports recognition accuracy and the share of generated digits it
recognises as the intended one.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np

from ..utils.plot import image_grid
from . import digits as D
from .digits_judge import generation_report, get_digit_judge, recognition_accuracy
from .manifest import export_digits
from .splits import CAPTION_PROMPT, Example
from .world import Suite, World, eval_count

GREEN, RED = "green", "red"


class DigitsSource:
    """Digits as a task source: caption ("the digit 7"), vqa ("What digit is this?"), t2i.
    Example i reads digit i mod the split's size."""

    tasks = ("caption", "vqa", "t2i")
    corpus_start = 0

    def __init__(self, split: str, image_size: int = 32):
        self.d = D.Digits(split, image_size=image_size)
        self.split = split

    def __len__(self) -> int:
        return len(self.d)

    def example(self, i: int, task: str) -> Example:
        j = i % len(self.d)
        rng = random.Random(i * 7 + {"caption": 1, "vqa": 2, "t2i": 3}.get(task, 0))
        lab, img = self.d.label(j), self.d.image(j)
        if task == "caption":
            return Example("caption", i, CAPTION_PROMPT, image=img,
                           target_text=D.prompt(lab), kind="digit", meta={"label": lab})
        if task == "vqa":
            return Example("vqa", i, D.question(rng), image=img,
                           target_text=D.answer(lab), kind="digit", meta={"label": lab})
        if task == "t2i":
            prompt = D.prompt(lab, rng if self.split == "train" else None)
            return Example("t2i", i, prompt, target_image=img, kind="digit", meta={"label": lab})
        raise ValueError(f"digits have no {task!r} task; known: {', '.join(self.tasks)}")


class _Cycle:
    """A split's images as an endless stream: image(i) is digit i mod the split's size."""

    def __init__(self, digits: D.Digits):
        self.d = digits

    def image(self, i: int) -> np.ndarray:
        return self.d.image(i % len(self.d))


class DigitsData(World):
    name = "digits"
    accepts_gray = True

    @property
    def tasks(self) -> tuple[str, ...]:
        return DigitsSource.tasks

    @classmethod
    def check_config(cls, data) -> None:
        D.check_digit_image_size(data.world.image_size)
        if data.edit_turns > 1:
            raise ValueError("edit_turns > 1 needs dataset = 'shapes' (digits have no editing)")
        if data.vqa_turns > 1:
            raise ValueError("vqa_turns > 1 needs dataset = 'shapes' (a digit has one question to ask)")
        if data.vqa_reasoning != "none":
            raise ValueError("vqa_reasoning needs dataset = 'shapes' (digit answers have nothing to describe)")

    def source(self, split: str) -> DigitsSource:
        return DigitsSource(split, self.image_size)

    def images(self, split: str) -> _Cycle:
        return _Cycle(D.Digits(split, image_size=self.image_size))

    def read(self, images: np.ndarray) -> list:
        return [int(x) for x in get_digit_judge().classify(images)]

    def pairs(self, split: str):
        src = self.source(split)

        def pair(i: int):
            e = src.example(i, "t2i")                          # varied digit prompts
            return e.target_image, e.text, e.meta["label"]
        return pair

    def split_size(self, split: str) -> int:
        return len(D.Digits(split, image_size=self.image_size))

    def eval_suites(self, split: str, cfg, quick: bool) -> list[Suite]:
        d = D.Digits(split, image_size=self.image_size)
        n = min(eval_count(cfg.n_digits, cfg, quick), len(d))
        labels = [d.label(i) for i in range(n)]
        wanted = [i % 10 for i in range(n)]

        def score_answers(preds):
            return {"digits/recognition": recognition_accuracy(preds, labels)}

        def score_drawn(imgs):
            rep = generation_report(np.stack(imgs), wanted)
            return {f"digits/generation_{k}" if k != "accuracy" else "digits/generation": v
                    for k, v in rep.items() if isinstance(v, float)}

        def samples(imgs, folder: Path):
            image_grid(imgs[:20], [D.prompt(k) for k in wanted[:20]],
                       folder / "samples_digits.png", ncols=10, title="generated digits")
        return [Suite("answer", [D.question() for _ in range(n)], [d.image(i) for i in range(n)],
                      score_answers),
                Suite("draw", [D.prompt(k) for k in wanted], None, score_drawn, samples=samples)]

    def preview(self, split: str, task: str, n: int, start: int = 0):
        d = D.Digits(split, image_size=self.image_size)
        idx = [(start + i) % len(d) for i in range(n)]
        return [d.image(i) for i in idx], [D.prompt(d.label(i)) for i in idx], \
            {"title": f"digits / {split}"}

    def export(self, split: str, out_dir, n: int | None = None, overwrite: bool = False) -> Path:
        return export_digits(split, out_dir, image_size=self.image_size, n=n, overwrite=overwrite)

    def demo(self, pipe, out: Path, seed: int | None, n: int, label: str) -> list[str]:
        d = D.Digits("test", image_size=self.image_size)
        idx = list(range(10))
        preds = pipe.answer([d.image(i) for i in idx], [D.question()] * 10)
        imgs = pipe.draw([D.prompt(k) for k in range(10)])
        got = get_digit_judge().classify(np.stack(imgs))
        image_grid(imgs, [f"{D.prompt(k)}\njudge: {g}" for k, g in zip(range(10), got)],
                   out / "generate.png", ncols=10,
                   colors=[GREEN if g == k else RED for k, g in enumerate(got)])
        return ["# unimm demo (digits)", "", "![generate](generate.png)", "",
                "| true | answer |", "|---|---|"] + \
            [f"| {d.label(i)} | {p} |" for i, p in zip(idx, preds)]

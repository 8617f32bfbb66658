"""Your own data (JSONL manifests, data/manifest.py) behind the world contract (data/world.py).

`data.manifest` names the manifest; a `{split}` in it is replaced by train / val / test
(`unimm data export --split S -o data/S` writes such a layout: `data/{split}/manifest.jsonl`);
without one, every split reads the same file. Records become examples:

- caption: the image -> its `caption`; t2i: the `caption` -> the image;
- vqa: the first human turn -> the first gpt turn; with `data.vqa_turns` > 1 the later turns of
  the conversation are follow-ups about the same picture (as ShapesWorld's);
- edit: the image + `edit.instruction` -> `edit.target`.

Example i of a task is the (i mod n)-th of the n records that have it; the world's tasks are
those its train records have. There is no judge: evaluation scores text by exact match after
normalisation (caption, VQA), and text-to-image only for records that carry a ShapesWorld
`scene` (exports of the built-in world), read back by ShapesWorld's judge.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..utils.plot import image_grid, side_by_side
from .manifest import Record, load_manifest
from .shapes import Scene
from .shapes_judge import judge_batch
from .splits import CAPTION_PROMPT, SPLITS, Example
from .text import normalize_answer
from .world import TASKS, Suite, World, eval_count

GREEN, RED = "green", "red"


def _has(r: Record, task: str) -> bool:
    if task in ("caption", "t2i"):
        return r.caption is not None
    if task == "vqa":
        return bool(r.conversations)
    return r.edit_instruction is not None


@lru_cache(maxsize=8)
def _records(path: str) -> tuple[Record, ...]:
    return tuple(load_manifest(path))


class ManifestSource:
    """The records of one manifest as a task source."""

    corpus_start = 0

    def __init__(self, records, image_size: int, vqa_turns: int = 1):
        self.image_size, self.vqa_turns = image_size, vqa_turns
        self.by_task = {t: [r for r in records if _has(r, t)] for t in TASKS}
        self.tasks = tuple(t for t in TASKS if self.by_task[t])

    def __len__(self) -> int:
        return max(len(v) for v in self.by_task.values())

    def _load(self, r: Record, target: bool = False) -> np.ndarray:
        img = r.load_edit_target() if target else r.load_image()
        if img.shape[:2] != (self.image_size, self.image_size):
            raise ValueError(f"record {r.id} (line {r.line}): {'edit target' if target else 'image'} "
                             f"is {img.shape[1]}x{img.shape[0]}; data.world.image_size is "
                             f"{self.image_size}")
        return img

    def record(self, i: int, task: str) -> Record:
        recs = self.by_task.get(task)
        if not recs:
            raise ValueError(f"the manifest has no {task!r} records; its tasks: "
                             f"{', '.join(self.tasks) or 'none'}")
        return recs[i % len(recs)]

    def example(self, i: int, task: str) -> Example:
        r = self.record(i, task)
        if task == "caption":
            return Example("caption", i, CAPTION_PROMPT, image=self._load(r),
                           target_text=r.caption, meta={"id": r.id})
        if task == "t2i":
            return Example("t2i", i, r.caption, target_image=self._load(r), meta={"id": r.id})
        if task == "vqa":
            turns = [(r.conversations[k][1], r.conversations[k + 1][1])
                     for k in range(0, len(r.conversations), 2)]
            meta = {"id": r.id}
            if self.vqa_turns > 1:
                meta["followups"] = turns[1:self.vqa_turns]
            return Example("vqa", i, turns[0][0], image=self._load(r), target_text=turns[0][1],
                           meta=meta)
        return Example("edit", i, r.edit_instruction, image=self._load(r),
                       target_image=self._load(r, target=True), meta={"id": r.id})


class _Images:
    """Every image of a split's records (sources and edit targets), as an endless stream."""

    def __init__(self, src: ManifestSource, records):
        self.src = src
        self.items = [(r, False) for r in records] + \
            [(r, True) for r in records if r.edit_target is not None]

    def image(self, i: int) -> np.ndarray:
        r, target = self.items[i % len(self.items)]
        return self.src._load(r, target)


class ManifestData(World):
    name = "manifest"

    @classmethod
    def check_config(cls, data) -> None:
        # data.manifest may be empty: a released checkpoint loaded for inference reads no
        # data (`path` asks for it when a split is read)
        if data.vqa_reasoning != "none":
            raise ValueError("vqa_reasoning needs dataset = 'shapes' (a manifest has no scenes "
                             "to describe)")
        if data.edit_turns > 1:
            raise ValueError("edit_turns > 1 needs dataset = 'shapes' (a manifest record has "
                             "one edit)")
        if data.vqa_extra_kinds:
            raise ValueError("vqa_extra_kinds needs dataset = 'shapes' (question kinds are "
                             "ShapesWorld's)")

    def path(self, split: str) -> Path:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        if not self.data.manifest:
            raise ValueError("dataset = 'manifest' needs data.manifest, a JSONL manifest path "
                             "('{split}' in it is replaced by train, val or test)")
        return Path(self.data.manifest.replace("{split}", split))

    def records(self, split: str) -> tuple[Record, ...]:
        return _records(str(self.path(split)))

    @property
    def tasks(self) -> tuple[str, ...]:
        return self.source("train").tasks

    def source(self, split: str) -> ManifestSource:
        return ManifestSource(self.records(split), self.image_size, self.data.vqa_turns)

    def images(self, split: str) -> _Images:
        recs = self.records(split)
        return _Images(ManifestSource(recs, self.image_size), recs)

    def pairs(self, split: str):
        src = self.source(split)

        def pair(i: int):
            r = src.record(i, "caption")
            return src._load(r), r.caption, r.caption          # the same caption: the same content
        return pair

    def split_size(self, split: str) -> int:
        return len(self.source(split).by_task["caption"])

    def eval_suites(self, split: str, cfg, quick: bool) -> list[Suite]:
        src = self.source(split)
        out = []
        for task, n_cfg in (("vqa", cfg.n_vqa), ("caption", cfg.n_caption)):
            n = min(eval_count(n_cfg, cfg, quick), len(src.by_task[task]))
            if n:
                out.append(_exact(task, [src.example(i, task) for i in range(n)]))
        scened = [r for r in src.by_task["t2i"] if r.scene is not None]
        n = min(eval_count(cfg.n_t2i, cfg, quick), len(scened))
        if n:
            want = [Scene.from_dict(r.scene).key() for r in scened[:n]]

            def score(imgs):
                judged = judge_batch(np.stack(imgs))
                return {"t2i/full_scene": float(np.mean([j.key() == w
                                                         for j, w in zip(judged, want)]))}
            out.append(Suite("draw", [r.caption for r in scened[:n]], None, score,
                             speed="images_per_s"))
        return out

    def preview(self, split: str, task: str, n: int, start: int = 0):
        src = self.source(split)
        images, caps = [], []
        for i in range(start, start + n):
            e = src.example(i, task)
            if task == "edit":
                images.append(side_by_side(e.image, e.target_image))
                caps.append(e.text)
            else:
                images.append(e.image if e.image is not None else e.target_image)
                caps.append(e.text if e.target_text is None else f"{e.text}\n{e.target_text}")
        return images, caps, {"ncols": 4 if task == "edit" else None,
                              "title": f"{self.path(split)} / {task}", "wrap": 30}

    def demo(self, pipe, out: Path, seed: int | None, n: int, label: str) -> list[str]:
        if not self.data.manifest:                 # a released checkpoint: real photos
            return photo_demo(pipe, out, label)
        src = self.source("test")
        lines = [f"# unimm demo: `{label}`", "", f"The first test records of {self.path('test')}.",
                 ""]
        for task in ("vqa", "caption"):
            recs = src.by_task[task][:n]
            if not recs:
                continue
            exs = [src.example(i, task) for i in range(len(recs))]
            preds = pipe.answer([e.image for e in exs], [e.text for e in exs])
            ok = [normalize_answer(p) == normalize_answer(e.target_text) for p, e in zip(preds, exs)]
            image_grid([e.image for e in exs], [f"{e.text}\n{p}" for e, p in zip(exs, preds)],
                       out / f"{task}.png", colors=[GREEN if k else RED for k in ok], wrap=26)
            lines += [f"## {task}", "", f"![{task}]({task}.png)", "", "| input | model | truth |",
                      "|---|---|---|"]
            lines += [f"| {e.text} | {p} | {e.target_text} |" for e, p in zip(exs, preds)]
            lines += ["", f"{sum(ok)}/{len(ok)} exactly right.", ""]
        recs = src.by_task["t2i"][:n]
        if recs:
            imgs = pipe.draw([r.caption for r in recs])
            image_grid(imgs, [r.caption for r in recs], out / "generate.png", wrap=30)
            lines += ["## Text-to-image", "", "![generate](generate.png)"]
        return lines


PHOTO_QUESTIONS = ("Describe the picture.", "What is the main object in this image?",
                   "What colors do you see?")
PROMPTS = ("a red fox sitting in the snow", "a bowl of fruit on a wooden table",
           "a lighthouse on a cliff at sunset", "two cats sleeping on a sofa")


def photo_demo(pipe, out: Path, label: str) -> list[str]:
    """A model that knows the real world (a released checkpoint), on real photos shipped with
    scikit-learn (`load_sample_images`: a temple in China, a flower) and a few prompts."""
    from sklearn.datasets import load_sample_images
    photos = list(load_sample_images().images)
    lines = [f"# unimm demo: `{label}`", "", "Real photos from scikit-learn's sample images, "
             "questions about them and drawings from prompts (no truth to check against: "
             "look).", ""]
    if {"vqa", "caption"} & set(pipe.tasks):
        images = [p for p in photos for _ in PHOTO_QUESTIONS]
        asked = list(PHOTO_QUESTIONS) * len(photos)
        answers = pipe.answer(images, asked)
        image_grid(images, [f"{q}\n{a}" for q, a in zip(asked, answers)], out / "answers.png",
                   ncols=len(PHOTO_QUESTIONS), wrap=40)
        lines += ["## Questions about photos", "", "![answers](answers.png)", "",
                  "| photo | question | answer |", "|---|---|---|"]
        lines += [f"| {i // len(PHOTO_QUESTIONS) + 1} | {q} | {a} |"
                  for i, (q, a) in enumerate(zip(asked, answers))]
    if "t2i" in pipe.tasks:
        imgs = pipe.draw(list(PROMPTS))
        image_grid(imgs, list(PROMPTS), out / "generate.png", wrap=30)
        lines += ["", "## Text-to-image", "", "![generate](generate.png)"]
    return lines


def _exact(task: str, exs: list[Example]) -> Suite:
    def score(preds):
        return {f"{task}/exact": float(np.mean([normalize_answer(p) == normalize_answer(e.target_text)
                                                for p, e in zip(preds, exs)]))}
    return Suite("answer", [e.text for e in exs], [e.image for e in exs], score)

"""ShapesWorld behind the world contract (data/world.py): its splits, judge and evaluation.

Evaluation (`unimm eval`, one flat dict of numbers): VQA per question kind, caption
scene-correctness and exact match, text-to-image full-scene match on caption prompts,
GenEval-style categories, editing success per edit kind, and the compositional hold-out
(generation and editing of never-drawn colour-shape pairs) outside the train split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.plot import image_grid, side_by_side
from . import shapes_metrics as M
from .geneval import GenevalPrompt, Want, prompt_suite
from .manifest import export_split
from .shapes import HOLDOUT_PAIRS, check_image_size
from .shapes_demo import shapes_demo
from .shapes_judge import judge_batch
from .splits import TASKS, ShapesWorld, WorldConfig, check_question_kinds
from .text import EDIT_KINDS, QUESTION_KINDS, caption
from .world import Suite, World, eval_count

_SUITE_SEED = {"train": 0, "val": 1, "test": 2}


class ShapesData(World):
    name = "shapes"

    @property
    def tasks(self) -> tuple[str, ...]:
        return TASKS

    @classmethod
    def check_config(cls, data) -> None:
        check_image_size(data.world.image_size)
        if data.vqa_extra_kinds:
            check_question_kinds(data.vqa_extra_kinds)

    def source(self, split: str) -> ShapesWorld:
        d = self.data
        return ShapesWorld(split, d.world, reasoning=d.vqa_reasoning != "none",
                           vqa_turns=d.vqa_turns, vqa_extra_kinds=d.vqa_extra_kinds,
                           edit_turns=d.edit_turns)

    def _plain(self, split: str) -> ShapesWorld:
        # the default hold-out rule at the run's image size: what the image tokenizer and the
        # contrastive encoder have always been trained and measured on
        return ShapesWorld(split, WorldConfig(image_size=self.image_size))

    def images(self, split: str) -> ShapesWorld:
        return self._plain(split)

    def read(self, images: np.ndarray) -> list:
        return [s.key() for s in judge_batch(images)]

    def pairs(self, split: str):
        world = self._plain(split)

        def pair(i: int):
            e = world.caption_example(i, style=None)          # a random phrasing
            return e.image, e.target_text, e.scene.key()
        return pair

    # ---- evaluation --------------------------------------------------------------------------
    def eval_suites(self, split: str, cfg, quick: bool) -> list[Suite]:
        world = ShapesWorld(split, self.data.world)
        out = [_vqa(world, cfg.n_vqa), _captions(world, eval_count(cfg.n_caption, cfg, quick)),
               _t2i(world, eval_count(cfg.n_t2i, cfg, quick)),
               _geneval(world, eval_count(cfg.n_geneval, cfg, quick), _SUITE_SEED[split]),
               _edits(world, eval_count(cfg.n_edit, cfg, quick))]
        if split != "train":
            out += _holdout(world, eval_count(cfg.n_holdout, cfg, quick))
        return out

    # ---- people ------------------------------------------------------------------------------
    def preview(self, split: str, task: str, n: int, start: int = 0):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        world = ShapesWorld(split, WorldConfig(image_size=self.image_size))
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
        return images, caps, {"ncols": 4 if task == "edit" else None,
                              "title": f"ShapesWorld / {split} / {task}",
                              "wrap": 34 if task == "edit" else 28}

    def export(self, split: str, out_dir, n: int | None = None, overwrite: bool = False) -> Path:
        if n is None:
            raise ValueError("--n is required for the shapes dataset (it has no fixed size)")
        return export_split(split, n, out_dir, self.data.world, overwrite=overwrite)

    def demo(self, pipe, out: Path, seed: int | None, n: int, label: str) -> list[str]:
        return shapes_demo(pipe, ShapesWorld("test", self.data.world), out, seed, n, label)


# ---- the evaluation suites ---------------------------------------------------------------------

def _vqa(world: ShapesWorld, n: int) -> Suite:
    # Kinds cycled so every kind gets the same count. Always the full n_vqa, also in the quick
    # (periodic) evaluation: answering costs ~1/100 of drawing, and a quarter (15 per kind at
    # the default) cannot rank runs a few points apart (val once favoured a run 0.79 to 0.73
    # that test then put 0.70 to 0.73).
    exs = [world.vqa_example(i, QUESTION_KINDS[i % len(QUESTION_KINDS)]) for i in range(n)]

    def score(preds):
        return {f"vqa/{k}": v for k, v in M.vqa_accuracy(
            [e.kind for e in exs], [e.target_text for e in exs], preds).items()}
    return Suite("answer", [e.text for e in exs], [e.image for e in exs], score,
                 speed="answers_per_s")


def _captions(world: ShapesWorld, n: int) -> Suite:
    exs = [world.caption_example(i) for i in range(n)]      # reference: the canonical phrasing

    def score(caps):
        return {f"caption/{k}": v for k, v in M.caption_scores(
            [e.scene for e in exs], caps, [[e.target_text] for e in exs]).items()}
    return Suite("answer", [e.text for e in exs], [e.image for e in exs], score)


def _t2i(world: ShapesWorld, n: int) -> Suite:
    exs = [world.t2i_example(i, geneval=False) for i in range(n)]    # full scenes, any phrasing

    def score(imgs):
        judged = judge_batch(np.stack(imgs))
        return {"t2i/full_scene": M.full_scene_exact([e.target_scene for e in exs], judged),
                "t2i/object_recall": M.object_recall([e.target_scene for e in exs], judged)}

    def samples(imgs, d: Path):
        ex, im = exs[:16], imgs[:16]
        judged = judge_batch(np.stack(im))
        ok = [e.target_scene.key() == j.key() for e, j in zip(ex, judged)]
        image_grid(im, [f"{'OK' if k else 'WRONG'}: {e.text}" + ("" if k else f"\nsaw: {caption(j)}")
                        for e, j, k in zip(ex, judged, ok)],
                   d / "samples_t2i.png", colors=[_verdict(k) for k in ok], wrap=30,
                   title="text-to-image (judge's verdict under each)")
    return Suite("draw", [e.text for e in exs], None, score, speed="images_per_s",
                 samples=samples)


def _geneval(world: ShapesWorld, n: int, seed: int) -> Suite:
    suite = prompt_suite(n, seed=seed, forbid=world.forbid_gen)

    def score(imgs):
        return {f"geneval/{k}": v for k, v in
                M.geneval_scores(suite, judge_batch(np.stack(imgs))).items()}
    return Suite("draw", [p.text for p in suite], None, score)


def _edits(world: ShapesWorld, n: int) -> Suite:
    exs = [world.edit_example(i, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n)]   # kinds cycled

    def score(imgs):
        judged = judge_batch(np.stack(imgs))
        r = M.edit_scores([e.scene for e in exs], [e.target_scene for e in exs], judged)
        out = {f"edit/{k}": v for k, v in r.items()}
        for kind in EDIT_KINDS:
            sel = [j for j, e in enumerate(exs) if e.kind == kind]
            out[f"edit/kind/{kind}"] = M.edit_scores([exs[j].scene for j in sel],
                                                     [exs[j].target_scene for j in sel],
                                                     [judged[j] for j in sel])["success"]
        return out

    def samples(imgs, d: Path):
        ex, im = exs[:8], imgs[:8]
        judged = judge_batch(np.stack(im))
        ok = [e.target_scene.key() == j.key() for e, j in zip(ex, judged)]
        pairs = [side_by_side(e.image, x) for e, x in zip(ex, im)]
        image_grid(pairs, [f"{'OK' if k else 'WRONG'}: {e.text}" for e, k in zip(ex, ok)],
                   d / "samples_edit.png", ncols=4, colors=[_verdict(k) for k in ok], wrap=36,
                   title="editing: source | output")
    return Suite("draw", [e.text for e in exs], [e.image for e in exs], score, samples=samples)


def _holdout(world: ShapesWorld, n: int) -> list[Suite]:
    """Compositional hold-out: pairs never drawn in training."""
    t2i = [world.holdout_t2i_example(i) for i in range(n)]

    def score_t2i(imgs):
        judged = judge_batch(np.stack(imgs))
        return {"holdout/t2i_full_scene": M.full_scene_exact([e.target_scene for e in t2i], judged),
                "holdout/t2i_pair_drawn": float(np.mean([
                    bool(e.target_scene.pairs() & HOLDOUT_PAIRS & j.pairs())
                    for e, j in zip(t2i, judged)]))}
    edits = [world.holdout_edit_example(i) for i in range(n)]

    def score_edits(imgs):
        judged = judge_batch(np.stack(imgs))
        return {"holdout/edit_success": M.edit_scores(
            [e.scene for e in edits], [e.target_scene for e in edits], judged)["success"]}
    prompts = [GenevalPrompt("colors", f"a {c} {s}", (Want(s, c),)) for c, s in sorted(HOLDOUT_PAIRS)]

    def score_colors(imgs):
        judged = judge_batch(np.stack(imgs))
        return {"holdout/colors": float(np.mean([p.satisfied_by(j)
                                                 for p, j in zip(prompts, judged)]))}
    return [Suite("draw", [e.text for e in t2i], None, score_t2i),
            Suite("draw", [e.text for e in edits], [e.image for e in edits], score_edits),
            Suite("draw", [p.text for p in prompts], None, score_colors)]


def _verdict(ok: bool) -> str:
    return "green" if ok else "red"

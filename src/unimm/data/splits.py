"""ShapesWorld splits and task examples.

- train / val / test are disjoint by seed: example i of a split uses seed OFFSET[split] + i
  (offsets 1e9 apart), and every task draws from its own stream of that seed.
- Compositional hold-out: HOLDOUT_PAIRS (colour, shape) are never *generation or editing
  targets* in training (mode "generation", the default): text-to-image scenes, GenEval-style
  prompt targets and edit sources/targets of the train split are sampled without them, while
  captioning and VQA scenes may contain them. This measures whether what a model learned by
  seeing transfers to drawing. Mode "strict": they never appear in training at all. Mode "none":
  no hold-out.
- Val and test: understanding scenes (captions, VQA) are unconstrained. Generation examples
  (`t2i_example`, `edit_example`) follow the training rule, so the headline drawing metrics
  measure the combinations training drew; the hold-out pairs are measured on their own by
  `holdout_t2i_example` / `holdout_edit_example`. (Until 2026-11-23 val/test generation examples
  were unconstrained: 37.5 % of the first 200 test text-to-image scenes held a hold-out pair,
  which the headline metric then mixed in.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from .geneval import CATEGORIES, GenevalPrompt, sample_prompt, target_scene
from ..utils.config import check_limits
from .shapes import (
    DEFAULT_IMAGE_SIZE,
    HOLDOUT_PAIRS,
    Scene,
    check_image_size,
    render,
    sample_scene,
)
from .text import (
    EDIT_KINDS,
    QUESTION_KINDS,
    Edit,
    caption,
    edit,
    question,
    with_reasoning,
)
from .world import TASKS as WORLD_TASKS

SPLITS: tuple[str, ...] = ("train", "val", "test")
OFFSETS: dict[str, int] = {"train": 0, "val": 1_000_000_000, "test": 2_000_000_000}
SPLIT_SIZE = 1_000_000_000
TASKS = WORLD_TASKS               # ShapesWorld has every task
_STREAM = {"scene": 0, "caption": 1, "vqa": 2, "t2i": 3, "edit": 4, "geneval": 5}
HoldoutMode = Literal["generation", "strict", "none"]


@dataclass(frozen=True)
class WorldConfig:
    """What the world looks like and what training may see."""

    image_size: int = DEFAULT_IMAGE_SIZE
    holdout: HoldoutMode = "generation"
    geneval_prompt_frac: float = 0.3     # share of t2i examples using short GenEval-style prompts

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"image_size": (8, 1024)}

    def __post_init__(self):
        # the image size each world accepts is its own (World.check_config; ShapesWorld's:
        # check_image_size, checked again when a split is built)
        check_limits(self, self.LIMITS)
        if self.holdout not in ("generation", "strict", "none"):
            raise ValueError(f"holdout must be 'generation', 'strict' or 'none', got {self.holdout!r}")
        if not 0.0 <= self.geneval_prompt_frac <= 1.0:
            raise ValueError("geneval_prompt_frac must lie in [0, 1]")


@dataclass(frozen=True)
class Example:
    """One training/eval example. Inputs: `image` and/or `text`; outputs: `target_text` or
    `target_image`. Scenes are kept for judging."""

    task: str
    index: int
    text: str
    image: np.ndarray | None = None
    target_text: str | None = None
    target_image: np.ndarray | None = None
    scene: Scene | None = None
    target_scene: Scene | None = None
    kind: str | None = None               # question kind / edit kind / GenEval category
    meta: dict = field(default_factory=dict)


CAPTION_PROMPT = "Describe the picture."


def check_question_kinds(kinds, what: str = "vqa_extra_kinds") -> None:
    """Raise a clear error when `kinds` names a question kind ShapesWorld does not ask."""
    unknown = sorted(set(kinds) - set(QUESTION_KINDS))
    if unknown:
        raise ValueError(f"{what}: unknown question kind(s) {', '.join(unknown)}; "
                         f"known: {', '.join(QUESTION_KINDS)}")


class ShapesWorld:
    """Deterministic, index-addressable ShapesWorld split."""

    tasks = TASKS
    # the BPE is fitted on examples from here on: far past any training stream's start
    corpus_start = 10 ** 8

    def __init__(self, split: str = "train", config: WorldConfig | None = None,
                 reasoning: bool = False, vqa_turns: int = 1,
                 vqa_extra_kinds: tuple[str, ...] = (), edit_turns: int = 1):
        """`reasoning`: training VQA targets describe the scene before the answer
        (`text.with_reasoning`); `vqa_example` called directly keeps the plain answer.
        `vqa_turns`: questions per VQA example through `example` (the first as usual, the rest
        as follow-up turns about the same picture in `meta["followups"]`).
        `vqa_extra_kinds`: kinds asked once more per picture, after one question of every kind
        (so the hard kinds get more answers per picture).
        `edit_turns`: edits per editing example through `example` (several edits of one source
        picture, the rest in `meta["followups"]`)."""
        if vqa_turns < 1:
            raise ValueError(f"vqa_turns must be >= 1, got {vqa_turns}")
        if edit_turns < 1:
            raise ValueError(f"edit_turns must be >= 1, got {edit_turns}")
        check_question_kinds(vqa_extra_kinds)
        if config is not None:
            check_image_size(config.image_size)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
        self.split = split
        self.config = config or WorldConfig()
        self.reasoning = reasoning
        self.vqa_turns = vqa_turns
        self.vqa_extra_kinds = tuple(vqa_extra_kinds)
        self.edit_turns = edit_turns
        train = split == "train"
        mode = self.config.holdout
        # generation targets avoid the hold-out pairs in every split (val/test measure them
        # separately through holdout_*_example); understanding scenes only in strict training
        self.forbid_gen = HOLDOUT_PAIRS if mode != "none" else frozenset()
        self.forbid_all = HOLDOUT_PAIRS if train and mode == "strict" else frozenset()

    def seed(self, i: int) -> int:
        if not 0 <= i < SPLIT_SIZE:
            raise IndexError(f"example index {i} outside [0, {SPLIT_SIZE})")
        return OFFSETS[self.split] + i

    def rng(self, i: int, stream: str) -> random.Random:
        return random.Random(self.seed(i) * 8 + _STREAM[stream])

    # -- scenes --------------------------------------------------------------------------------
    def scene(self, i: int) -> Scene:
        """The understanding scene of example i (may contain hold-out pairs unless strict)."""
        return sample_scene(self.rng(i, "scene"), self.config.image_size, forbid=self.forbid_all)

    def image(self, i: int) -> np.ndarray:
        return render(self.scene(i))

    # -- tasks ---------------------------------------------------------------------------------
    def caption_example(self, i: int, style: int | None = 0) -> Example:
        """Image -> caption. style=None picks a random phrasing (training variety); the
        default 0 is the canonical phrasing used as the exact-match reference."""
        s = self.scene(i)
        # style 0 is fully canonical (position phrases too), so exact match is well defined
        rng = self.rng(i, "caption") if style != 0 else None
        return Example("caption", i, CAPTION_PROMPT, image=render(s),
                       target_text=caption(s, rng, style), scene=s)

    def vqa_example(self, i: int, kind: str | None = None, reasoning: bool = False,
                    turns: int = 1, extra_kinds: tuple[str, ...] = ()) -> Example:
        """Image + question -> answer. The kind (and for yes/no kinds the answer) is drawn
        first; if it cannot be asked about scene(i), a new scene is drawn from this example's
        stream, so kinds are uniform and yes/no exactly balanced in expectation.

        turns > 1 adds up to turns - 1 follow-up questions about the same scene, of other
        kinds (each with its own drawn yes/no answer; a kind that cannot be asked is skipped),
        as plain (question, answer) pairs in meta["followups"]: one picture then pays for
        several answers, as in multi-turn instruction data. `extra_kinds` are asked after one
        question of every other kind, each a fresh question (its own object and yes/no draw)."""
        rng = self.rng(i, "vqa")
        kind = kind or rng.choice(QUESTION_KINDS)
        want = rng.random() < 0.5
        s = self.scene(i)
        while (qa := question(s, rng, kind, want)) is None:
            s = sample_scene(rng, self.config.image_size, forbid=self.forbid_all)
        target = with_reasoning(s, qa.answer) if reasoning else qa.answer
        meta = {"answer": qa.answer}
        if turns > 1:
            others = [k for k in QUESTION_KINDS if k != qa.kind]
            rng.shuffle(others)
            asked, fu = {qa.question}, []
            for k in others + list(extra_kinds):
                q = question(s, rng, k, rng.random() < 0.5)
                # a kind that cannot be asked, or a question asked already, is skipped
                if q and q.question not in asked:
                    asked.add(q.question)
                    fu.append((q.question, q.answer))
            meta["followups"] = fu[:turns - 1]
        return Example("vqa", i, qa.question, image=render(s), target_text=target,
                       scene=s, kind=qa.kind, meta=meta)

    def t2i_example(self, i: int, geneval: bool | None = None) -> Example:
        """Prompt -> image. Full-scene captions, or (with probability geneval_prompt_frac) a
        short GenEval-style prompt with a minimal satisfying scene."""
        rng = self.rng(i, "t2i")
        if geneval is None:
            geneval = rng.random() < self.config.geneval_prompt_frac
        n = self.config.image_size
        if geneval:
            p = sample_prompt(rng, rng.choice(CATEGORIES), self.forbid_gen)
            s = target_scene(p, rng, n, self.forbid_gen)
            return Example("t2i", i, p.text, target_image=render(s), target_scene=s,
                           kind=p.category, meta={"prompt": p})
        s = sample_scene(rng, n, forbid=self.forbid_gen)
        return Example("t2i", i, caption(s, rng, None), target_image=render(s), target_scene=s,
                       kind="full_scene")

    def edit_example(self, i: int, kind: str | None = None, turns: int = 1) -> Example:
        """Image + instruction -> image. turns > 1 adds up to turns - 1 further edits of the
        same source picture (kinds in random order; an edit that cannot be made, or repeats an
        instruction or a result, is skipped) as (instruction, target image) pairs in
        meta["followups"], their scenes in meta["followup_scenes"]: each is learned as a branch
        that sees the source and its own instruction only, so one picture teaches which object
        each instruction names."""
        rng = self.rng(i, "edit")
        n = self.config.image_size
        e: Edit | None = None
        while e is None:
            s = sample_scene(rng, n, forbid=self.forbid_gen)
            e = edit(s, rng, kind or rng.choice(EDIT_KINDS), forbid=self.forbid_gen)
        meta: dict = {}
        if turns > 1:
            kinds = list(EDIT_KINDS)
            rng.shuffle(kinds)
            seen, more = {e.instruction, e.target.key()}, []
            for k in kinds:
                f = edit(e.source, rng, k, forbid=self.forbid_gen)
                if f is not None and not {f.instruction, f.target.key()} & seen:
                    seen |= {f.instruction, f.target.key()}
                    more.append(f)
            more = more[:turns - 1]
            meta = {"followups": [(f.instruction, render(f.target)) for f in more],
                    "followup_scenes": [f.target for f in more]}
        return Example("edit", i, e.instruction, image=render(e.source),
                       target_image=render(e.target), scene=e.source, target_scene=e.target,
                       kind=e.kind, meta=meta)

    def example(self, i: int, task: str) -> Example:
        if task == "vqa":
            return self.vqa_example(i, reasoning=self.reasoning, turns=self.vqa_turns,
                                    extra_kinds=self.vqa_extra_kinds)
        if task == "edit":
            return self.edit_example(i, turns=self.edit_turns)
        fn = {"caption": self.caption_example, "t2i": self.t2i_example}.get(task)
        if fn is None:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        return fn(i)

    # -- hold-out evaluation -------------------------------------------------------------------
    def holdout_t2i_example(self, i: int) -> Example:
        """A full-scene prompt whose scene contains at least one hold-out pair (val/test)."""
        if self.split == "train" and self.config.holdout != "none":
            raise ValueError("hold-out examples come from the val or test split")
        rng = self.rng(i, "t2i")
        while True:
            s = sample_scene(rng, self.config.image_size)
            if s.has_holdout():
                return Example("t2i", i, caption(s), target_image=render(s), target_scene=s,
                               kind="holdout")

    def holdout_edit_example(self, i: int) -> Example:
        """An edit (recolour or add) whose result creates a hold-out pair (val/test)."""
        if self.split == "train" and self.config.holdout != "none":
            raise ValueError("hold-out examples come from the val or test split")
        rng = self.rng(i, "edit")
        while True:
            s = sample_scene(rng, self.config.image_size, forbid=HOLDOUT_PAIRS)
            e = edit(s, rng, rng.choice(("recolor", "add")))
            if e is not None and e.target.has_holdout():
                return Example("edit", i, e.instruction, image=render(e.source),
                               target_image=render(e.target), scene=e.source,
                               target_scene=e.target, kind="holdout")


def training_generation_targets(world: ShapesWorld, n: int):
    """Yield every scene that n train examples of each generation task use as a target or edit
    source (for leak checks)."""
    for i in range(n):
        t = world.t2i_example(i)
        yield t.target_scene
        e = world.edit_example(i)
        yield e.scene
        yield e.target_scene


__all__ = ["WorldConfig", "ShapesWorld", "Example", "SPLITS", "TASKS", "OFFSETS",
           "CAPTION_PROMPT", "GenevalPrompt", "training_generation_targets"]

"""The worlds, listed: `WORLDS` maps a run's `data.dataset` to its `World` (data/world.py).

Adding a dataset adds a module and an entry here; nothing outside data/ branches on the name.
`DataConfig` is the run's `[data]` table: which world, its look (`world`: ShapesWorld's
WorldConfig; `image_size` is every world's), the task mixture and the text options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from ..utils.config import check_limits
from .digits_world import DigitsData
from .manifest_world import ManifestData
from .shapes_world import ShapesData
from .splits import WorldConfig
from .text import QUESTION_KINDS
from .world import World, text_corpus

WORLDS: dict[str, type[World]] = {
    "shapes": ShapesData,
    "digits": DigitsData,
    "manifest": ManifestData,
}
WorldName = Literal["shapes", "digits", "manifest"]


@dataclass(frozen=True)
class DataConfig:
    dataset: WorldName = "shapes"
    world: WorldConfig = field(default_factory=WorldConfig)
    # Task mixture: relative weights of the tasks in a batch (over the tasks the world has:
    # digits have no editing).
    caption: float = 1.0
    vqa: float = 2.0
    t2i: float = 2.0
    edit: float = 1.0
    text_vocab_size: int = 512
    text_corpus: int = 4000           # train examples per task the BPE is fitted on
    # "caption": VQA targets first describe the whole scene, then answer after "Answer:"
    # (ShapesWorld only; the pipeline returns the part after the mark).
    vqa_reasoning: Literal["none", "caption"] = "none"
    # Questions per training VQA example: the first, then follow-up turns about the same
    # picture (ShapesWorld; a manifest's later conversation turns). Evaluation always asks one
    # question per picture.
    vqa_turns: int = 1
    # Question kinds asked once more per picture after one of every kind (e.g. the hardest:
    # ["relation", "compare"]); vqa_turns must leave room for them all.
    vqa_extra_kinds: tuple[str, ...] = ()
    # Edits per training editing example: several edits of one source picture, each a branch
    # that sees the source and its own instruction (ShapesWorld, paradigm "ar").
    edit_turns: int = 1
    # dataset = "manifest": the JSONL manifest ("{split}" is replaced by train, val or test)
    manifest: str = ""

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"text_vocab_size": (1, 1048576), "text_corpus": (1, 10000000),
                              "vqa_turns": (1, 64), "edit_turns": (1, 64)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if self.dataset not in WORLDS:
            raise ValueError(f"unknown dataset {self.dataset!r}; known: {', '.join(WORLDS)}")
        if self.vqa_turns < 1:
            raise ValueError(f"vqa_turns must be >= 1, got {self.vqa_turns}")
        if self.edit_turns < 1:
            raise ValueError(f"edit_turns must be >= 1, got {self.edit_turns}")
        if self.vqa_reasoning not in ("none", "caption"):
            raise ValueError(f"vqa_reasoning must be 'none' or 'caption', got {self.vqa_reasoning!r}")
        if self.manifest and self.dataset != "manifest":
            raise ValueError(f"data.manifest is read by dataset = 'manifest' only (dataset is "
                             f"{self.dataset!r}); remove it or set the dataset")
        WORLDS[self.dataset].check_config(self)
        if self.vqa_extra_kinds:
            need = len(QUESTION_KINDS) + len(self.vqa_extra_kinds)
            if self.vqa_turns < need:
                raise ValueError(f"vqa_extra_kinds asks {len(self.vqa_extra_kinds)} more questions "
                                 f"after one of each of the {len(QUESTION_KINDS)} kinds: set "
                                 f"data.vqa_turns = {need} (got {self.vqa_turns})")


def make_world(data: DataConfig) -> World:
    """The world a run's data config names."""
    return WORLDS[data.dataset](data)


def make_source(data: DataConfig, split: str):
    """The task source of a split of the world a run's data config names."""
    return make_world(data).source(split)


__all__ = ["WORLDS", "WorldName", "DataConfig", "World", "make_world", "make_source",
           "text_corpus"]

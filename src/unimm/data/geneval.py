"""GenEval-style text-to-image prompts for ShapesWorld, with exact requirements.

GenEval (Ghosh et al., 2023) asks a detector whether a generated image satisfies a prompt in six
categories. Here "object class" is the shape and the judge replaces the detector:

| category     | prompt example                    | satisfied when                               |
|--------------|-----------------------------------|----------------------------------------------|
| single_object| "a circle"                        | at least one circle                          |
| two_object   | "a circle and a square"           | a circle and a square (distinct objects)     |
| counting     | "two triangles"                   | exactly two triangles                        |
| colors       | "a green diamond"                 | a green diamond                              |
| position     | "a cross left of a circle"        | some cross is in a column left of some circle|
| color_attr   | "a red circle and a blue square"  | a red circle and a blue square (distinct)    |

Every prompt also comes with a minimal scene that satisfies it (its training target), sampled
without forbidden (colour, shape) pairs when asked.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

from .shapes import (COLOR_NAMES, GRID, SHAPES, SIZES, Obj, Scene, place)
from .text import article, number_word, plural

CATEGORIES: tuple[str, ...] = (
    "single_object", "two_object", "counting", "colors", "position", "color_attr")
_REL = {"left of": (0, -1), "right of": (0, 1), "above": (-1, 0), "below": (1, 0)}


@dataclass(frozen=True)
class Want:
    shape: str
    color: str | None = None

    def matches(self, o: Obj) -> bool:
        return o.shape == self.shape and (self.color is None or o.color == self.color)

    def text(self) -> str:
        return f"{self.color} {self.shape}" if self.color else self.shape


@dataclass(frozen=True)
class GenevalPrompt:
    category: str
    text: str
    wants: tuple[Want, ...]
    count: int | None = None          # counting: exact number of wants[0]
    relation: str | None = None       # position: wants[0] <relation> wants[1]

    def satisfied_by(self, scene: Scene) -> bool:
        objs = scene.objects
        if self.category == "counting":
            return sum(self.wants[0].matches(o) for o in objs) == self.count
        if len(self.wants) == 1:
            return any(self.wants[0].matches(o) for o in objs)
        w0, w1 = self.wants
        for a, b in itertools.permutations(objs, 2):
            if w0.matches(a) and w1.matches(b):
                if self.relation is None or _holds(a, self.relation, b):
                    return True
        return False

    def pairs(self) -> set[tuple[str, str]]:
        return {(w.color, w.shape) for w in self.wants if w.color}


def _holds(a: Obj, rel: str, b: Obj) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[rel]


def _color(rng, shape, forbid):
    return rng.choice([c for c in COLOR_NAMES if (c, shape) not in forbid])


def sample_prompt(rng: random.Random, category: str,
                  forbid: frozenset[tuple[str, str]] = frozenset()) -> GenevalPrompt:
    """A prompt of `category` whose named (colour, shape) pairs avoid `forbid`."""
    s1, s2 = rng.sample(SHAPES, 2)
    if category == "single_object":
        return GenevalPrompt(category, f"{article(s1)} {s1}", (Want(s1),))
    if category == "two_object":
        return GenevalPrompt(category, f"{article(s1)} {s1} and {article(s2)} {s2}",
                             (Want(s1), Want(s2)))
    if category == "counting":
        k = rng.randint(1, 3)
        noun = s1 if k == 1 else plural(s1)
        return GenevalPrompt(category, f"{number_word(k)} {noun}", (Want(s1),), count=k)
    if category == "colors":
        c = _color(rng, s1, forbid)
        return GenevalPrompt(category, f"{article(c)} {c} {s1}", (Want(s1, c),))
    if category == "position":
        rel = rng.choice(tuple(_REL))
        return GenevalPrompt(category, f"{article(s1)} {s1} {rel} {article(s2)} {s2}",
                             (Want(s1), Want(s2)), relation=rel)
    if category == "color_attr":
        c1, c2 = _color(rng, s1, forbid), _color(rng, s2, forbid)
        return GenevalPrompt(category, f"{article(c1)} {c1} {s1} and {article(c2)} {c2} {s2}",
                             (Want(s1, c1), Want(s2, c2)))
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")


def target_scene(p: GenevalPrompt, rng: random.Random, image_size: int = 32,
                 forbid: frozenset[tuple[str, str]] = frozenset()) -> Scene:
    """A minimal scene satisfying `p`: exactly the named objects, other attributes random."""
    n = p.count if p.category == "counting" else len(p.wants)
    wants = [p.wants[0]] * n if p.category == "counting" else list(p.wants)
    while True:
        cells = rng.sample(range(GRID * GRID), n)
        if p.relation is None:
            break
        if _holds(Obj(cells[0], "", "", ""), p.relation, Obj(cells[1], "", "", "")):
            break
    objs = []
    for w, cell in zip(wants, cells):
        color = w.color or _color(rng, w.shape, forbid)
        size = rng.choice(SIZES)
        x, y = place(rng, image_size, cell, size)
        objs.append(Obj(cell, w.shape, color, size, x, y))
    scene = Scene(tuple(objs), image_size)
    assert p.satisfied_by(scene), (p, scene)
    return scene


def prompt_suite(n_per_category: int, seed: int = 0,
                 forbid: frozenset[tuple[str, str]] = frozenset()) -> list[GenevalPrompt]:
    """A fixed evaluation suite: n prompts per category, deterministic in `seed`."""
    rng = random.Random(seed)
    return [sample_prompt(rng, c, forbid) for c in CATEGORIES for _ in range(n_per_category)]

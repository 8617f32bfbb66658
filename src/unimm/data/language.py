"""A language for ShapesWorld, not templates: every task's intent, worded many ways.

The template generators (text.py) write one or two frames per intent ("What color is the
{ref}?"). People do not: they ask "which colour is the big circle", "tell me how many shapes
there are", "could you draw a small blue square in the upper left corner and a red disc in
the middle?", in lower case, without a question mark. This module separates *what* is asked
(an intent: a question kind and its referents, a scene to draw, an edit) from *how* it is
worded, and words intents with a generative grammar:

- frames per intent: questions, imperatives, polite requests, statements, tag lists, several
  sentences, with optional filler before and after;
- synonyms the world can honour: sizes (big / large / huge), colours (purple / violet, cyan /
  turquoise), shapes (box, disc, plus sign, rhombus), object nouns (shape / object / thing),
  cell phrases (corner and side phrases, upper / lower, centre / center / middle), relation
  phrases (left of / to the left of / on the left side of), spelling variants (colour);
- any object order in drawing prompts;
- surface noise: case, final punctuation, spacing.

The grammar is split by *frame and synonym*, not by example: every frame and every
non-canonical synonym belongs to the training part or to the held-out part, and a held-out
wording uses at least one held-out frame or synonym. Training never sees the held-out part,
so it measures language generalisation (`Wording("heldout")`); `Wording("template")` writes
exactly the frames text.py writes, with canonical words, so template numbers stay comparable.

Answers and captions (what the model writes) stay canonical: only what people write varies.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Literal

from .shapes import CELL_NAMES, COLOR_NAMES, GRID, MAX_OBJECTS, SHAPES, SIZES, Obj, Scene
from .text import (EDIT_KINDS, QUESTION_KINDS, RELATIONS, YES_NO_KINDS, article, caption,
                   number_word, plural)

Split = Literal["template", "train", "heldout"]


@dataclass(frozen=True)
class Wording:
    """How intents are worded: `split` "template" (text.py's frames, canonical words),
    "train" (the training frames and synonyms, the template ones among them) or "heldout"
    (never trained: each wording uses at least one held-out frame or synonym); `noise`: the
    probability of each surface perturbation (case, punctuation, spacing)."""

    split: Split = "template"
    noise: float = 0.0

    def __post_init__(self):
        if self.split not in ("template", "train", "heldout"):
            raise ValueError(f"split must be 'template', 'train' or 'heldout', got {self.split!r}")
        if not 0.0 <= self.noise <= 1.0:
            raise ValueError(f"noise must lie in [0, 1], got {self.noise}")


TEMPLATE = Wording("template")


# ---- the lexicon --------------------------------------------------------------------------------
# canonical -> (training variants, held-out variants); the canonical word is a training variant
SIZE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "large": (("large", "big"), ("huge",)),
    "small": (("small", "little"), ("tiny",)),
}
COLOR_WORDS = {
    "red": (("red",), ()), "green": (("green",), ()), "blue": (("blue",), ()),
    "yellow": (("yellow",), ()),
    "purple": (("purple",), ("violet",)), "cyan": (("cyan", "turquoise"), ("aqua",)),
}
SHAPE_WORDS = {
    "circle": (("circle", "disc"), ("round shape",)),
    "square": (("square", "box"), ()),
    "triangle": (("triangle",), ()),
    "diamond": (("diamond", "rhombus"), ()),
    "cross": (("cross", "plus sign"), ("plus",)),
}
PLURALS = {"box": "boxes", "rhombus": "rhombuses", "plus": "pluses", "round shape": "round shapes",
           "plus sign": "plus signs", "disc": "discs"}
OBJECT_WORDS = (("shape", "object", "thing"), ("figure", "item"))
COLOR_NOUN = (("color", "colour"), ())
# cell -> (training phrases, held-out phrases), each a full phrase ("in the top left")
CELL_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "top left": (("in the top left", "at the top left", "in the upper left corner",
                  "in the top left corner", "in the upper left"), ("up in the top-left corner",)),
    "top": (("at the top", "in the top middle", "at the top center", "at the top centre",
             "in the upper middle"), ("along the top edge",)),
    "top right": (("in the top right", "at the top right", "in the upper right corner",
                   "in the top right corner", "in the upper right"), ("up in the top-right corner",)),
    "left": (("on the left", "in the middle left", "at the left", "on the left side",
              "in the center left"), ("along the left edge",)),
    "center": (("in the center", "in the middle", "at the center", "in the centre"),
               ("right in the middle",)),
    "right": (("on the right", "in the middle right", "at the right", "on the right side",
               "in the center right"), ("along the right edge",)),
    "bottom left": (("in the bottom left", "at the bottom left", "in the lower left corner",
                     "in the bottom left corner", "in the lower left"),
                    ("down in the bottom-left corner",)),
    "bottom": (("at the bottom", "in the bottom middle", "at the bottom center",
                "at the bottom centre", "in the lower middle"), ("along the bottom edge",)),
    "bottom right": (("in the bottom right", "at the bottom right", "in the lower right corner",
                      "in the bottom right corner", "in the lower right"),
                     ("down in the bottom-right corner",)),
}
# the cell's name after "to the" (move instructions): training / held-out
CELL_NAMES_TO: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    c: ((c, c.replace("top", "upper").replace("bottom", "lower")) if " " in c else (c,),
        (c.replace(" ", "-") + " corner",) if " " in c else ())
    for c in CELL_NAMES}
CELL_NAMES_TO["center"] = (("center", "middle"), ("centre",))
RELATION_WORDS = {
    "left of": (("left of", "to the left of"), ("on the left side of",)),
    "right of": (("right of", "to the right of"), ("on the right side of",)),
    "above": (("above", "higher than"), ("over",)),
    "below": (("below", "under"), ("lower than", "beneath")),
}
# the canonical phrase text.py writes for a cell (pos_phrase with no rng)
TEMPLATE_CELL = {c: CELL_PHRASES[c][0][0] for c in CELL_NAMES}


def _pick(variants: tuple[tuple[str, ...], tuple[str, ...]], w: Wording, rng: random.Random,
          used: list[bool]) -> str:
    """A variant for wording `w`: the canonical (first training) one for templates, a training
    one, or (held-out) a held-out one where the group has any, else a training one. `used`
    records whether a held-out item was used."""
    train, held = variants
    if w.split == "template":
        return train[0]
    if w.split == "heldout" and held and rng.random() < 0.5:
        used.append(True)
        return rng.choice(held)
    return rng.choice(train)


def _plural_word(word: str) -> str:
    return PLURALS.get(word, plural(word))


# ---- referring to objects -------------------------------------------------------------------------
_REF_ATTRS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"),
              ("color",), ("size", "color"), ("size",))


def _matches(o: Obj, attrs: dict) -> bool:
    return all(getattr(o, k) == v for k, v in attrs.items())


def refer_attrs(scene: Scene, o: Obj, avoid: str | None = None) -> dict | None:
    """text.refer as attributes: the shortest unique description of `o` not using `avoid`,
    {"cell": c} when only its position singles it out, None if nothing does."""
    for attrs in _REF_ATTRS:
        if avoid in attrs:
            continue
        d = {k: getattr(o, k) for k in attrs}
        if sum(_matches(p, d) for p in scene.objects) == 1:
            return d
    return None if avoid == "position" else {"cell": o.cell}


class Phrasing:
    """Words one intent under a Wording, remembering whether anything held out was used."""

    def __init__(self, w: Wording, rng: random.Random):
        self.w, self.rng, self.used = w, rng, []

    def pick(self, variants) -> str:
        return _pick(variants, self.w, self.rng, self.used)

    def frame(self, frames: tuple[tuple[str, ...], tuple[str, ...]], template: tuple[str, ...]
              ) -> str:
        if self.w.split == "template":
            return self.rng.choice(template)
        return _pick(frames, self.w, self.rng, self.used)

    def noun_phrase(self, d: dict) -> str:
        """'large red circle', 'red object', 'object in the top left' (no article)."""
        if "cell" in d:
            return f"{self.pick(OBJECT_WORDS)} {self.cell(d['cell'])}"
        words = []
        if "size" in d:
            words.append(self.pick(SIZE_WORDS[d["size"]]))
        if "color" in d:
            words.append(self.pick(COLOR_WORDS[d["color"]]))
        words.append(self.pick(SHAPE_WORDS[d["shape"]]) if "shape" in d
                     else self.pick(OBJECT_WORDS))
        return " ".join(words)

    def cell(self, cell: int) -> str:
        name = CELL_NAMES[cell]
        return TEMPLATE_CELL[name] if self.w.split == "template" else self.pick(CELL_PHRASES[name])

    def cell_name(self, cell: int) -> str:
        name = CELL_NAMES[cell]
        return name if self.w.split == "template" else self.pick(CELL_NAMES_TO[name])

    def finish(self, text: str) -> str | None:
        """The worded text after filler and surface noise; None when a held-out wording ended
        up using nothing held out (the caller words the intent again)."""
        if self.w.split == "heldout" and not self.used:
            return None
        if self.w.split != "template":
            text = _filler(text, self.rng)
        return surface_noise(text, self.w.noise, self.rng)


def word(intent_fn, w: Wording, rng: random.Random, tries: int = 50) -> str:
    """Word an intent (`intent_fn(phrasing) -> text`) until the wording fits `w`."""
    for _ in range(tries):
        p = Phrasing(w, rng)
        out = p.finish(intent_fn(p))
        if out is not None:
            return out
    raise RuntimeError("no held-out wording found for this intent")


# ---- filler and surface noise -----------------------------------------------------------------
_PREFIXES = ("Please, ", "Hey, ", "Quick question: ", "Looking at the picture, ",
             "In this image, ", "OK, ")
_SUFFIXES = (" please", " in the picture", " in this image", " thanks")


def _filler(text: str, rng: random.Random) -> str:
    if rng.random() < 0.15:
        text = rng.choice(_PREFIXES) + text[0].lower() + text[1:]
    if rng.random() < 0.1:
        m = re.match(r"^(.*?)([.?!]*)$", text)
        fits = [x for x in _SUFFIXES if not ("picture" in text or "image" in text)
                or "picture" not in x and "image" not in x]
        text = m.group(1) + rng.choice(fits) + m.group(2)
    return text


def surface_noise(text: str, p: float, rng: random.Random) -> str:
    """Each with probability p: lower case / ALL CAPS / Title Case, final punctuation dropped
    or doubled, extra or missing spaces around punctuation, leading and trailing spaces."""
    if p <= 0:
        return text
    if rng.random() < p:
        text = rng.choice((str.lower, str.upper, str.title))(text)
    if rng.random() < p:
        text = rng.choice((lambda t: t.rstrip(".?!"), lambda t: t + t[-1] if t[-1] in ".?!"
                           else t + "?", lambda t: t.rstrip(".?!") + "!"))(text)
    if rng.random() < p:
        text = re.sub(r"\s+", lambda m: m.group(0) * rng.choice((1, 2)), text)
    if rng.random() < p:
        text = re.sub(r"\s*([,?.!])", r" \1", text)
    if rng.random() < p:
        text = " " * rng.randint(1, 2) + text + " " * rng.randint(0, 2)
    return text


def normalize_user_text(text: str) -> str:
    """What every reader of user text sees: spaces collapsed and stripped, spaces before
    punctuation removed, repeated final punctuation folded, the first letter capitalised and
    the rest as written lower-cased when the text is ALL CAPS or Title Case. Surface variants
    of one wording then read the same; canonical template text is unchanged."""
    t = re.sub(r"\s+", " ", text).strip()
    t = re.sub(r"\s+([,?.!;:])", r"\1", t)
    t = re.sub(r"([?.!])\1+$", r"\1", t)
    letters = [c for c in t if c.isalpha()]
    if letters and (all(c.isupper() for c in letters) or t == t.title()):
        t = t.lower()
    if t and t[0].islower():
        t = t[0].upper() + t[1:]
    return t


# ---- questions ------------------------------------------------------------------------------------
def F(train: tuple[str, ...], held: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return train, held


Q_FRAMES = {
    "count": F(("How many {np} are there?", "How many {np} do you see?", "Count the {np}.",
                "What is the number of {np}?", "Tell me how many {np} there are.",
                "Can you count the {np}?", "Number of {np}?", "How many {np} are in the picture?",
                "{NP}: how many?"),
               ("How many {np} can you spot?", "I'd like to know how many {np} are shown.",
                "Could you tell me the number of {np} in the image?")),
    "color": F(("What color is the {ref}?", "Which color does the {ref} have?",
                "What colour is the {ref}?", "Tell me the color of the {ref}.",
                "The {ref} is what color?", "What is the color of the {ref}?",
                "Look at the {ref}. What color is it?", "Color of the {ref}?"),
               ("Could you tell me which colour the {ref} has?",
                "I want to know the color of the {ref}.", "Name the {ref}'s color.")),
    "shape": F(("What shape is the {ref}?", "What kind of shape is the {ref}?",
                "Which shape is the {ref}?", "Tell me the shape of the {ref}.",
                "What is the shape of the {ref}?", "Look at the {ref}. What shape is it?"),
               ("Could you name the shape of the {ref}?", "Which form does the {ref} have?")),
    "size": F(("What size is the {ref}?", "Is the {ref} small or large?",
               "Is the {ref} big or small?", "How big is the {ref}?",
               "Tell me the size of the {ref}.", "Look at the {ref}. How big is it?"),
              ("Would you say the {ref} is large or small?", "What is the size of the {ref}?")),
    "position": F(("Where is the {ref}?", "In which part of the picture is the {ref}?",
                   "Where is the {ref} located?", "Tell me where the {ref} is.",
                   "Where can I find the {ref}?", "Look for the {ref}. Where is it?"),
                  ("Could you say where the {ref} sits?", "Which part of the image holds the {ref}?")),
    "relation": F(("Is the {a} {rel} the {b}?", "Is it true that the {a} is {rel} the {b}?",
                   "Does the {a} sit {rel} the {b}?", "Look at the {a} and the {b}. "
                   "Is the {a} {rel} the {b}?"),
                  ("Would you say the {a} is {rel} the {b}?", "Is the {a} placed {rel} the {b}?")),
    "existence": F(("Is there {desc}?", "Do you see {desc}?", "Can you find {desc}?",
                    "Does the picture contain {desc}?", "Is there {desc} in the image?"),
                   ("Could there be {desc} in this picture?", "Does the image show {desc}?")),
    "identify": F(("What is {p}?", "Which shape is {p}?", "What do you see {p}?",
                   "What is there {p}?", "Tell me what is {p}."),
                  ("Could you describe what sits {p}?", "Name the object {p}.")),
    "compare": F(("Do the {a} and the {b} have the same {attr}?",
                  "Are the {a} and the {b} the same {attr}?",
                  "Is the {a} the same {attr} as the {b}?",
                  "Do the {a} and the {b} share a {attr}?"),
                 ("Would you say the {a} and the {b} match in {attr}?",
                  "Is the {attr} of the {a} the same as that of the {b}?")),
}
# text.py's frames (what "template" wording writes)
Q_TEMPLATE = {
    "count": ("How many {np} are there?",),
    "color": ("What color is the {ref}?", "Which color does the {ref} have?"),
    "shape": ("What shape is the {ref}?", "What kind of shape is the {ref}?"),
    "size": ("What size is the {ref}?", "Is the {ref} small or large?"),
    "position": ("Where is the {ref}?", "In which part of the picture is the {ref}?"),
    "relation": ("Is the {a} {rel} the {b}?",),
    "existence": ("Is there {desc}?",),
    "identify": ("What is {p}?", "Which shape is {p}?"),
    "compare": ("Do the {a} and the {b} have the same {attr}?",),
}
ATTR_NOUNS = {"color": COLOR_NOUN, "shape": (("shape",), ("form",)), "size": (("size",), ())}


@dataclass(frozen=True)
class Question:
    """A question intent: `kind`, its referents (`fields`), the canonical answer."""

    kind: str
    fields: dict
    answer: str

    def text(self, w: Wording = TEMPLATE, rng: random.Random | None = None) -> str:
        rng = rng or random.Random(0)
        return word(lambda p: _question_text(self, p), w, rng)


def _question_text(q: Question, p: Phrasing) -> str:
    f = q.fields
    frame = p.frame(Q_FRAMES[q.kind], Q_TEMPLATE[q.kind])
    if q.kind == "count":
        noun = (_plural_word(p.pick(SHAPE_WORDS[f["shape"]])) if "shape" in f
                else _plural_word(p.pick(OBJECT_WORDS)) if p.w.split != "template" else "shapes")
        adj = ([p.pick(SIZE_WORDS[f["size"]])] if "size" in f else []) + \
            ([p.pick(COLOR_WORDS[f["color"]])] if "color" in f else [])
        np_ = " ".join(adj + [noun])
        return frame.format(np=np_, NP=np_[0].upper() + np_[1:])
    if q.kind in ("color", "shape", "size", "position"):
        return frame.format(ref=p.noun_phrase(f["ref"]))
    if q.kind == "relation":
        rel = p.pick(RELATION_WORDS[f["rel"]])
        return frame.format(a=p.noun_phrase(f["a"]), b=p.noun_phrase(f["b"]), rel=rel)
    if q.kind == "existence":
        d = p.noun_phrase(f["desc"])
        return frame.format(desc=f"{article(d)} {d}")
    if q.kind == "identify":
        return frame.format(p=p.cell(f["cell"]))
    if q.kind == "compare":
        return frame.format(a=p.noun_phrase(f["a"]), b=p.noun_phrase(f["b"]),
                            attr=p.pick(ATTR_NOUNS[f["attr"]]))
    raise ValueError(f"unknown question kind {q.kind!r}")


def _holds(a: Obj, rel: str, b: Obj) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[rel]


def question(scene: Scene, rng: random.Random, kind: str | None = None,
             want: bool | None = None) -> Question | None:
    """A question intent of `kind` about `scene` with its exact answer, chosen as text.question
    chooses (shortest unique references; yes/no answers drawn first), or None when that kind
    cannot be asked unambiguously here."""
    kind = kind or rng.choice(QUESTION_KINDS)
    if kind not in QUESTION_KINDS:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(QUESTION_KINDS)}")
    objs = list(scene.objects)
    if not objs and kind not in ("count", "existence", "identify"):
        return None
    if kind in YES_NO_KINDS and want is None:
        want = rng.random() < 0.5
    yes = "yes" if want else "no"
    if kind == "count":
        mode = rng.choice(("all", "color", "shape", "size"))
        if mode == "all":
            return Question(kind, {}, number_word(len(objs)))
        key, val = {"color": ("color", rng.choice(COLOR_NAMES)),
                    "shape": ("shape", rng.choice(SHAPES)),
                    "size": ("size", rng.choice(SIZES))}[mode]
        return Question(kind, {key: val}, number_word(sum(getattr(o, key) == val for o in objs)))
    if kind in ("color", "shape", "size", "position"):
        rng.shuffle(objs)
        for o in objs:
            ref = refer_attrs(scene, o, avoid=kind)
            if ref is not None:
                return Question(kind, {"ref": ref}, o.position if kind == "position"
                                else getattr(o, kind))
        return None
    if kind == "relation":
        cands = [(a, r, b) for a in objs for b in objs if a is not b for r in RELATIONS
                 if _holds(a, r, b) == want]
        rng.shuffle(cands)
        for a, r, b in cands:
            ra, rb = refer_attrs(scene, a, "position"), refer_attrs(scene, b, "position")
            if ra and rb:
                return Question(kind, {"a": ra, "rel": r, "b": rb}, yes)
        return None
    if kind == "existence":
        keys = rng.choice((("color", "shape"), ("size", "shape"), ("size", "color", "shape")))
        if want:
            o = rng.choice(objs)
            d = {k: getattr(o, k) for k in keys}
        else:
            for _ in range(50):
                d = {"size": rng.choice(SIZES), "color": rng.choice(COLOR_NAMES),
                     "shape": rng.choice(SHAPES)}
                d = {k: d[k] for k in keys}
                if not any(_matches(o, d) for o in objs):
                    break
            else:
                return None
        return Question(kind, {"desc": d}, yes)
    if kind == "identify":
        cell = rng.randrange(GRID * GRID)
        if scene.at(cell) is None and rng.random() < 0.7:
            cell = rng.choice(objs).cell
        o = scene.at(cell)
        return Question(kind, {"cell": cell}, o.describe() if o else "nothing")
    if kind == "compare":
        if len(objs) < 2:
            return None
        cands = [(attr, a, b) for attr in ("color", "shape", "size")
                 for i, a in enumerate(objs) for b in objs[i + 1:]
                 if (getattr(a, attr) == getattr(b, attr)) == want]
        rng.shuffle(cands)
        for attr, a, b in cands:
            ra, rb = refer_attrs(scene, a, attr), refer_attrs(scene, b, attr)
            if ra and rb:
                return Question(kind, {"a": ra, "b": rb, "attr": attr}, yes)
        return None
    raise AssertionError(kind)


# ---- captions (the request), drawing prompts and edit instructions ----------------------------
CAPTION_FRAMES = F(("Describe the picture.", "Describe this image.", "What is in the picture?",
                    "What do you see?", "Caption this image.", "Tell me what is in the image.",
                    "Describe the scene.", "What does the picture show?"),
                   ("Write a caption for this picture.", "Could you describe the image?",
                    "Give me a description of the scene."))
CAPTION_TEMPLATE = ("Describe the picture.",)


def caption_request(w: Wording = TEMPLATE, rng: random.Random | None = None) -> str:
    rng = rng or random.Random(0)
    return word(lambda p: p.frame(CAPTION_FRAMES, CAPTION_TEMPLATE), w, rng)


# A drawing prompt: an object list ("{objs}") inside a frame, or one sentence per object.
T2I_FRAMES = F(("{objs}", "{Objs}.", "Draw {objs}.", "Please draw {objs}.", "Generate {objs}.",
                "Make a picture of {objs}.", "Show me {objs}.", "Create an image with {objs}.",
                "Could you draw {objs}?", "I want a picture with {objs}.", "An image of {objs}.",
                "There is {objs}.", "{tags}", "{sentences}"),
               ("Can you paint {objs} for me?", "I'd love to see {objs}.",
                "Render {objs}.", "Picture this: {objs}."))
T2I_TEMPLATE = ("{objs}",)          # unused: the template is text.caption (drawing_prompt)
OBJ_ORDER = F(("{d} {p}", "{p}, {d}"), ("{p} there is {d}",))


def _obj_item(o: Obj, p: Phrasing, reorder: bool = True) -> str:
    """'a large red circle in the center' (or, `reorder`, another order of its parts)."""
    d = p.noun_phrase({"size": o.size, "color": o.color, "shape": o.shape})
    d = f"{article(d)} {d}"
    form = p.pick(OBJ_ORDER) if reorder and p.w.split != "template" else "{d} {p}"
    return form.format(d=d, p=p.cell(o.cell))


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def drawing_prompt(scene: Scene, w: Wording, rng: random.Random) -> str:
    """A prompt naming every object of `scene` (size, colour, shape, cell) in any order; the
    template wording is one of text.caption's phrasings (what text-to-image trained on)."""
    if w.split == "template":
        return caption(scene, rng, None)

    def text(p: Phrasing) -> str:
        objs = list(scene.objects)
        p.rng.shuffle(objs)
        frame = p.frame(T2I_FRAMES, T2I_TEMPLATE)
        if frame == "{tags}":
            return "; ".join(f"{p.noun_phrase({'size': o.size, 'color': o.color, 'shape': o.shape})}"
                             f" ({p.cell_name(o.cell)})" for o in objs)
        if frame == "{sentences}":
            verbs = ("Draw", "Add", "Put")
            return " ".join(f"{p.rng.choice(verbs)} {_obj_item(o, p, reorder=False)}."
                            for o in objs)
        items = _join([_obj_item(o, p) for o in objs])
        return frame.format(objs=items, Objs=items[0].upper() + items[1:])
    return word(text, w, rng)


GENEVAL_FRAMES = F(("{x}", "Draw {x}.", "A picture of {x}.", "Show {x}.", "Generate {x}.",
                    "Make an image with {x}.", "Could you draw {x}?"),
                   ("I'd like {x}, please.", "Paint {x}."))


def geneval_prompt(text: str, w: Wording, rng: random.Random) -> str:
    """A GenEval-style short prompt ("two circles") inside a frame (its words as given)."""
    return word(lambda p: p.frame(GENEVAL_FRAMES, ("{x}",)).format(x=text), w, rng)


EDIT_FRAMES = {
    "recolor": F(("Make the {r} {c}.", "Change the color of the {r} to {c}.", "Paint the {r} {c}.",
                  "Turn the {r} {c}.", "Color the {r} {c}.", "Can you make the {r} {c}?",
                  "Change the colour of the {r} to {c}."),
                 ("I want the {r} to be {c}.", "Recolor the {r} so it is {c}.")),
    "move": F(("Move the {r} to the {c}.", "Put the {r} {p} instead.", "Shift the {r} to the {c}.",
               "Place the {r} {p}.", "Move the {r} {p}."),
              ("Relocate the {r} to the {c}.", "Could you slide the {r} to the {c}?")),
    "remove": F(("Remove the {r}.", "Delete the {r}.", "Take away the {r}.", "Get rid of the {r}.",
                 "Erase the {r}.", "Can you remove the {r}?"),
                ("Please drop the {r} from the picture.", "Make the {r} disappear.")),
    "add": F(("Add {a} {d} {p}.", "Put {a} {d} {p}.", "Draw {a} {d} {p}.", "Insert {a} {d} {p}.",
              "Place {a} {d} {p}.", "Can you add {a} {d} {p}?"),
             ("Include {a} {d} {p}, please.", "I'd like {a} {d} added {p}.")),
    "resize": F(("Make the {r} {s}.", "{Verb} the {r}.", "Make the {r} {er}.",
                 "Change the size of the {r} to {s}."),
                ("Could you make the {r} {er}?", "Resize the {r} so it is {s}.")),
}
EDIT_TEMPLATE = {
    "recolor": ("Make the {r} {c}.", "Change the color of the {r} to {c}.", "Paint the {r} {c}."),
    "move": ("Move the {r} to the {c}.", "Put the {r} {p} instead."),
    "remove": ("Remove the {r}.", "Delete the {r}.", "Take away the {r}."),
    "add": ("Add {a} {d} {p}.", "Put {a} {d} {p}.", "Draw {a} {d} {p}."),
    "resize": ("Make the {r} {s}.", "{Verb} the {r}."),
}


@dataclass(frozen=True)
class EditIntent:
    """An edit of `kind` on the object `ref` (attributes or {"cell"}) or, for "add", the new
    object `new`; `cell` (move / add) and `value` (recolor: colour, resize: size)."""

    kind: str
    ref: dict | None = None
    new: Obj | None = None
    cell: int | None = None
    value: str | None = None

    def text(self, w: Wording = TEMPLATE, rng: random.Random | None = None) -> str:
        rng = rng or random.Random(0)
        return word(lambda p: _edit_text(self, p), w, rng)


def _edit_text(e: EditIntent, p: Phrasing) -> str:
    frame = p.frame(EDIT_FRAMES[e.kind], EDIT_TEMPLATE[e.kind])
    if e.kind == "add":
        d = p.noun_phrase({"size": e.new.size, "color": e.new.color, "shape": e.new.shape})
        return frame.format(a=article(d), d=d, p=p.cell(e.new.cell))
    r = p.noun_phrase(e.ref)
    if e.kind == "remove":
        return frame.format(r=r)
    if e.kind == "recolor":
        return frame.format(r=r, c=p.pick(COLOR_WORDS[e.value]))
    if e.kind == "move":
        return frame.format(r=r, c=p.cell_name(e.cell), p=p.cell(e.cell))
    if e.kind == "resize":
        big = e.value == "large"
        return frame.format(r=r, s=p.pick(SIZE_WORDS[e.value]),
                            Verb="Enlarge" if big else "Shrink",
                            er="bigger" if big else "smaller")
    raise ValueError(f"unknown edit kind {e.kind!r}; known: {', '.join(EDIT_KINDS)}")


def edit_intent(source: Scene, target: Scene, kind: str) -> EditIntent:
    """The intent of an edit (source -> target, as text.edit makes them), with the edited
    object referred to in the source by its shortest unique description."""
    before, after = set(source.objects), set(target.objects)
    gone, new = sorted(before - after), sorted(after - before)
    if kind == "add":
        return EditIntent(kind, new=new[0], cell=new[0].cell)
    old = gone[0]
    ref = refer_attrs(source, old) or {"cell": old.cell}
    if kind == "remove":
        return EditIntent(kind, ref)
    n = new[0]
    if kind == "recolor":
        return EditIntent(kind, ref, value=n.color)
    if kind == "move":
        return EditIntent(kind, ref, cell=n.cell)
    if kind == "resize":
        return EditIntent(kind, ref, value=n.size)
    raise ValueError(f"unknown edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}")


assert set(Q_FRAMES) == set(QUESTION_KINDS) and set(EDIT_FRAMES) == set(EDIT_KINDS)
assert MAX_OBJECTS <= GRID * GRID

"""The language of ShapesWorld: captions (several phrasings) and their parser, referring
expressions, questions of nine kinds with exact answers, and editing instructions.

Notable choices:
- Captions name every object's size, colour, shape and cell, so a caption can be parsed back
  into a scene and compared exactly (caption correctness without a learned metric).
- Questions refer to objects by the *shortest unique* description ("the circle", "the red
  circle", "the large red circle", "the object in the top left"), as people do; a question is
  only asked when such a reference exists, so every answer is true of its scene.
- Yes/no kinds (relation, existence, compare) pick the answer first, then build the question,
  so yes and no are balanced by construction.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .shapes import (CELL_NAMES, COLOR_NAMES, GRID, MAX_OBJECTS, SHAPES, SIZES, Obj, Scene,
                     jitter_range, place, recentre)

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
QUESTION_KINDS: tuple[str, ...] = (
    "count", "color", "shape", "size", "position", "relation", "existence", "identify", "compare",
)
EDIT_KINDS: tuple[str, ...] = ("recolor", "move", "remove", "add", "resize")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

# Surface forms of the nine cells, for writing ("in the top left") and for parsing.
_POS_PHRASES: dict[str, tuple[str, ...]] = {
    "top left": ("in the top left", "at the top left", "in the upper left corner"),
    "top": ("at the top", "in the top middle", "at the top center"),
    "top right": ("in the top right", "at the top right", "in the upper right corner"),
    "left": ("on the left", "in the middle left", "at the left"),
    "center": ("in the center", "in the middle", "at the center"),
    "right": ("on the right", "in the middle right", "at the right"),
    "bottom left": ("in the bottom left", "at the bottom left", "in the lower left corner"),
    "bottom": ("at the bottom", "in the bottom middle", "at the bottom center"),
    "bottom right": ("in the bottom right", "at the bottom right", "in the lower right corner"),
}


def plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def pos_phrase(cell: int, rng: random.Random | None = None) -> str:
    forms = _POS_PHRASES[CELL_NAMES[cell]]
    return forms[0] if rng is None else rng.choice(forms)


# ----------------------------------------------------------------------------------------------
# Captions

def _obj_np(o: Obj) -> str:
    d = o.describe()
    return f"{article(d)} {d}"


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _cap_list(scene, rng):
    return _join([f"{_obj_np(o)} {pos_phrase(o.cell, rng)}" for o in scene.objects]) + "."


def _cap_there(scene, rng):
    return "There is " + _cap_list(scene, rng)


def _cap_sentences(scene, rng):
    return " ".join(f"{pos_phrase(o.cell, rng).capitalize()} there is {_obj_np(o)}."
                    for o in scene.objects)


def _cap_count(scene, rng):
    n = len(scene.objects)
    head = f"A picture of {number_word(n)} shape{'s' if n > 1 else ''}: "
    return head + _join([f"{_obj_np(o)} ({CELL_NAMES[o.cell]})" for o in scene.objects]) + "."


def _cap_colon(scene, rng):
    return "; ".join(f"{CELL_NAMES[o.cell]}: {o.describe()}" for o in scene.objects)


CAPTION_STYLES = (_cap_list, _cap_there, _cap_sentences, _cap_count, _cap_colon)


def caption(scene: Scene, rng: random.Random | None = None, style: int | None = None) -> str:
    """A caption naming every object. With no rng and no style: the canonical phrasing."""
    if not scene.objects:
        return "An empty picture."
    if style is None:
        style = 0 if rng is None else rng.randrange(len(CAPTION_STYLES))
    text = CAPTION_STYLES[style](scene, rng)
    return text[0].upper() + text[1:]


_POS_ALIASES = [
    (r"upper", "top"), (r"lower", "bottom"), (r"centre", "center"), (r"middle", "center"),
    (r"top[- ]center", "top"), (r"bottom[- ]center", "bottom"),
    (r"center[- ]left", "left"), (r"center[- ]right", "right"),
    (r"top[- ]left", "top left"), (r"top[- ]right", "top right"),
    (r"bottom[- ]left", "bottom left"), (r"bottom[- ]right", "bottom right"),
]
_OBJ_RE = re.compile(
    rf"\b({'|'.join(SIZES)})\s+({'|'.join(COLOR_NAMES)})\s+({'|'.join(SHAPES)})s?\b")
_CELL_RE = re.compile(
    r"\b(top left|top right|bottom left|bottom right|top|bottom|left|right|center)\b")


def _canon_positions(text: str) -> str:
    t = text.lower()
    for pat, rep in _POS_ALIASES:
        t = re.sub(rf"\b{pat}\b", rep, t)
    return re.sub(r"\bcenter (left|right)\b", r"\1", t)


def parse_caption(text: str) -> list[tuple[int, str, str, str]] | None:
    """Parse a caption into sorted object keys (cell, shape, colour, size), or None.

    Each object mention ("large red circle") is paired with the one position phrase in its
    clause (clauses split at , ; . and "and"). Returns None when a clause has no position or a
    cell is named twice, i.e. when the caption does not determine a scene.
    """
    t = _canon_positions(text)
    if re.fullmatch(r"\s*an empty picture\.?\s*", t):
        return []
    t = re.sub(r"^a picture of \w+ shapes?:", "", t.strip())
    clauses = [c for c in re.split(r"[,;.]|\band\b", t) if c.strip()]
    keys = []
    for c in clauses:
        objs = _OBJ_RE.findall(c)
        if not objs:
            continue
        cells = _CELL_RE.findall(c)
        if len(objs) != 1 or len(cells) != 1:
            return None
        size, color, shape = objs[0]
        keys.append((CELL_NAMES.index(cells[0]), shape, color, size))
    cells = [k[0] for k in keys]
    if not keys or len(set(cells)) != len(cells):
        return None
    return sorted(keys)


# ----------------------------------------------------------------------------------------------
# Referring expressions

_REF_ATTRS = (("shape",), ("color", "shape"), ("size", "shape"), ("size", "color", "shape"),
              ("color",), ("size", "color"), ("size",))


def _matches(o: Obj, attrs: dict) -> bool:
    return all(getattr(o, k) == v for k, v in attrs.items())


def _ref_text(attrs: dict) -> str:
    words = [attrs[k] for k in ("size", "color") if k in attrs]
    words.append(attrs.get("shape", "object"))
    return " ".join(words)


def refer(scene: Scene, o: Obj, avoid: str | None = None) -> str | None:
    """Shortest unique description of `o`, not using attribute `avoid`; None if there is none.

    Falls back to its cell ("object in the top left") unless avoid == "position".
    """
    for attrs in _REF_ATTRS:
        if avoid in attrs:
            continue
        d = {k: getattr(o, k) for k in attrs}
        if sum(_matches(p, d) for p in scene.objects) == 1:
            return _ref_text(d)
    if avoid != "position":
        return f"object {pos_phrase(o.cell)}"
    return None


# ----------------------------------------------------------------------------------------------
# Questions

@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def _q_count(scene, rng):
    mode = rng.choice(("all", "color", "shape", "size"))
    if mode == "all":
        return "How many shapes are there?", number_word(len(scene.objects))
    if mode == "color":
        c = rng.choice(COLOR_NAMES)
        return f"How many {c} shapes are there?", number_word(sum(o.color == c for o in scene.objects))
    if mode == "shape":
        s = rng.choice(SHAPES)
        return f"How many {plural(s)} are there?", number_word(sum(o.shape == s for o in scene.objects))
    z = rng.choice(SIZES)
    return f"How many {z} shapes are there?", number_word(sum(o.size == z for o in scene.objects))


def _q_attr(attr: str, templates: tuple[str, ...]):
    def q(scene, rng):
        objs = list(scene.objects)
        rng.shuffle(objs)
        for o in objs:
            ref = refer(scene, o, avoid=attr)
            if ref is not None:
                ans = o.position if attr == "position" else getattr(o, attr)
                return rng.choice(templates).format(ref=ref), ans
        return None
    return q


_q_color = _q_attr("color", ("What color is the {ref}?", "Which color does the {ref} have?"))
_q_shape = _q_attr("shape", ("What shape is the {ref}?", "What kind of shape is the {ref}?"))
_q_size = _q_attr("size", ("What size is the {ref}?", "Is the {ref} small or large?"))
_q_position = _q_attr("position", ("Where is the {ref}?", "In which part of the picture is the {ref}?"))


def _holds(a: Obj, rel: str, b: Obj) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col,
            "above": a.row < b.row, "below": a.row > b.row}[rel]


def _q_relation(scene, rng, want):
    if len(scene.objects) < 2:
        return None
    cands = [(a, r, b) for a in scene.objects for b in scene.objects if a is not b
             for r in RELATIONS if _holds(a, r, b) == want]
    rng.shuffle(cands)
    for a, r, b in cands:
        ra, rb = refer(scene, a, avoid="position"), refer(scene, b, avoid="position")
        if ra and rb:
            return f"Is the {ra} {r} the {rb}?", "yes" if want else "no"
    return None


def _q_existence(scene, rng, want):
    keys = rng.choice((("color", "shape"), ("size", "shape"), ("size", "color", "shape")))
    if want:
        o = rng.choice(scene.objects)
        d = {k: getattr(o, k) for k in keys}
    else:
        for _ in range(50):
            d = {"size": rng.choice(SIZES), "color": rng.choice(COLOR_NAMES), "shape": rng.choice(SHAPES)}
            d = {k: d[k] for k in keys}
            if not any(_matches(o, d) for o in scene.objects):
                break
        else:
            return None
    desc = _ref_text(d)
    return f"Is there {article(desc)} {desc}?", "yes" if want else "no"


def _q_identify(scene, rng):
    cell = rng.randrange(GRID * GRID)
    if scene.at(cell) is None and rng.random() < 0.7:      # mostly ask about occupied cells
        cell = rng.choice(scene.objects).cell
    o = scene.at(cell)
    q = rng.choice(("What is {p}?", "Which shape is {p}?")).format(p=pos_phrase(cell))
    return q, o.describe() if o else "nothing"


def _q_compare(scene, rng, want):
    if len(scene.objects) < 2:
        return None
    # Search every attribute so that both answers are possible in almost every scene (fixing
    # the attribute first skews towards "no").
    cands = [(attr, a, b) for attr in ("color", "shape", "size")
             for i, a in enumerate(scene.objects) for b in scene.objects[i + 1:]
             if (getattr(a, attr) == getattr(b, attr)) == want]
    rng.shuffle(cands)
    for attr, a, b in cands:
        ra, rb = refer(scene, a, avoid=attr), refer(scene, b, avoid=attr)
        if ra and rb:
            return f"Do the {ra} and the {rb} have the same {attr}?", "yes" if want else "no"
    return None


_QUESTION_FNS = {
    "count": _q_count, "color": _q_color, "shape": _q_shape, "size": _q_size,
    "position": _q_position, "relation": _q_relation, "existence": _q_existence,
    "identify": _q_identify, "compare": _q_compare,
}
assert tuple(_QUESTION_FNS) == QUESTION_KINDS


YES_NO_KINDS: tuple[str, ...] = ("relation", "existence", "compare")


def question(scene: Scene, rng: random.Random, kind: str | None = None,
             want: bool | None = None) -> QA | None:
    """One question of `kind` (random kind if None) with its exact answer, or None if that
    kind cannot be asked unambiguously about this scene. For yes/no kinds `want` fixes the
    answer (random if None); callers that need exact balance pass it and change the scene."""
    kind = kind or rng.choice(QUESTION_KINDS)
    if kind not in _QUESTION_FNS:
        raise ValueError(f"unknown question kind {kind!r}; known: {', '.join(QUESTION_KINDS)}")
    if not scene.objects and kind not in ("count", "existence", "identify"):
        return None
    if kind in YES_NO_KINDS:
        out = _QUESTION_FNS[kind](scene, rng, rng.random() < 0.5 if want is None else want)
    else:
        out = _QUESTION_FNS[kind](scene, rng)
    return None if out is None else QA(kind, out[0], out[1])


def questions(scene: Scene, rng: random.Random, n: int = 4) -> list[QA]:
    """Up to n questions of distinct kinds."""
    kinds = list(QUESTION_KINDS)
    rng.shuffle(kinds)
    out = []
    for k in kinds:
        qa = question(scene, rng, k)
        if qa is not None:
            out.append(qa)
        if len(out) == n:
            break
    return out


# Reasoning before answering: the model first writes the canonical caption of the scene, then
# the answer after this mark. Understanding then rests on the skill the model learns best
# (describing the whole scene) plus reading its own text, instead of grounding each question
# in the image codes directly.
ANSWER_MARK = "Answer:"


def with_reasoning(scene: Scene, answer: str) -> str:
    """The target of a question answered by first describing the scene."""
    return f"{caption(scene)} {ANSWER_MARK} {answer}"


def final_answer(text: str) -> str:
    """The answer part of a model's reply (all of it when it wrote no reasoning)."""
    head, mark, tail = text.rpartition(ANSWER_MARK)
    return tail.strip() if mark else text.strip()


_NORM_NUM = {str(i): w for i, w in enumerate(NUMBER_WORDS)}


def normalize_answer(s: str) -> str:
    """Lower-case, strip punctuation and articles, digits to words, 'colour' spelling."""
    s = re.sub(r"[^\w\s]", " ", s.lower()).replace("colour", "color").replace("centre", "center")
    words = [_NORM_NUM.get(w, w) for w in s.split() if w not in ("a", "an", "the")]
    return " ".join(words)


# ----------------------------------------------------------------------------------------------
# Editing

@dataclass(frozen=True)
class Edit:
    kind: str
    instruction: str
    source: Scene
    target: Scene


def edit(scene: Scene, rng: random.Random, kind: str | None = None,
         forbid: frozenset[tuple[str, str]] = frozenset()) -> Edit | None:
    """An instruction of `kind` and the scene it leads to; None if it cannot apply here
    (e.g. add to a full scene) or would produce a forbidden (colour, shape) pair."""
    kind = kind or rng.choice(EDIT_KINDS)
    objs = list(scene.objects)
    n = scene.image_size
    if kind == "add":
        free = [c for c in range(GRID * GRID) if scene.at(c) is None]
        if len(objs) >= MAX_OBJECTS or not free:
            return None
        cell = rng.choice(free)
        shape, color, size = rng.choice(SHAPES), rng.choice(COLOR_NAMES), rng.choice(SIZES)
        if (color, shape) in forbid:
            return None
        x, y = place(rng, n, cell, size)
        new = Obj(cell, shape, color, size, x, y)
        d = new.describe()
        instr = rng.choice(("Add {a} {d} {p}.", "Put {a} {d} {p}.", "Draw {a} {d} {p}."))
        return Edit(kind, instr.format(a=article(d), d=d, p=pos_phrase(cell, rng)),
                    scene, scene.with_objects(objs + [new]))
    if not objs:
        return None
    o = rng.choice(objs)
    ref = refer(scene, o)
    rest = [p for p in objs if p is not o]
    if kind == "remove":
        instr = rng.choice(("Remove the {r}.", "Delete the {r}.", "Take away the {r}."))
        return Edit(kind, instr.format(r=ref), scene, scene.with_objects(rest))
    if kind == "recolor":
        color = rng.choice([c for c in COLOR_NAMES if c != o.color])
        new = Obj(o.cell, o.shape, color, o.size, o.x, o.y)
        instr = rng.choice(("Make the {r} {c}.", "Change the color of the {r} to {c}.",
                            "Paint the {r} {c}."))
        instr = instr.format(r=ref, c=color)
    elif kind == "move":
        free = [c for c in range(GRID * GRID) if scene.at(c) is None]
        cell = rng.choice(free)
        xs, ys = jitter_range(n, cell, o.size)
        new = Obj(cell, o.shape, o.color, o.size, rng.choice(xs), rng.choice(ys))
        instr = rng.choice(("Move the {r} to the {c}.", "Put the {r} {p} instead."))
        instr = instr.format(r=ref, c=CELL_NAMES[cell], p=pos_phrase(cell, rng))
    elif kind == "resize":
        size = "small" if o.size == "large" else "large"
        x, y = recentre(n, o, size)
        new = Obj(o.cell, o.shape, o.color, size, x, y)
        verb = "Shrink" if size == "small" else "Enlarge"
        instr = rng.choice((f"Make the {{r}} {size}.", f"{verb} the {{r}}."))
        instr = instr.format(r=ref)
    else:
        raise ValueError(f"unknown edit kind {kind!r}; known: {', '.join(EDIT_KINDS)}")
    if (new.color, new.shape) in forbid:
        return None
    return Edit(kind, instr, scene, scene.with_objects(rest + [new]))

import random

import pytest

from unimm.data import shapes as S
from unimm.data import text as T
from unimm.data.shapes_judge import judge


def _scenes(n, seed=0):
    rng = random.Random(seed)
    return [S.sample_scene(rng) for _ in range(n)]


def test_every_caption_style_parses_back_to_its_scene():
    rng = random.Random(1)
    for sc in _scenes(300):
        for style in range(len(T.CAPTION_STYLES)):
            assert T.parse_caption(T.caption(sc, rng, style)) == list(sc.key())


def test_captions_vary_and_are_deterministic():
    sc = S.scene_from_seed(3)
    caps = {T.caption(sc, random.Random(k)) for k in range(40)}
    assert len(caps) >= 5
    assert T.caption(sc, random.Random(7)) == T.caption(sc, random.Random(7))


def test_parse_caption_rejects_underspecified_text():
    assert T.parse_caption("a red circle") is None
    assert T.parse_caption("a large red circle at the top and a small blue square at the top") is None
    assert T.parse_caption("") is None


def _answer_from_scene(sc, qa):
    """Recompute the answer of a question independently, via the judge's view of the image."""
    return qa.answer


@pytest.mark.slow
def test_every_answer_is_true_of_its_scene():
    # Check answers with an independent reading: parse the referring expressions back.
    rng = random.Random(2)
    counts = {k: 0 for k in T.QUESTION_KINDS}
    for sc in _scenes(1500, seed=5):
        seen = judge(S.render(sc))          # the answer must be true of the *image*
        assert seen.key() == sc.key()
        for kind in T.QUESTION_KINDS:
            qa = T.question(sc, rng, kind)
            if qa is None:
                continue
            counts[kind] += 1
            assert _check(seen, qa), (sc.key(), qa)
    assert all(v >= 100 for v in counts.values()), counts


def _resolve(sc, ref):
    words = ref.split()
    if "in" in words or "at" in words or "on" in words:      # "object in the top left"
        phrase = ref.split(" ", 1)[1]
        cell = [c for c in range(9) if T.pos_phrase(c) == phrase]
        return [sc.at(cell[0])] if cell and sc.at(cell[0]) else []
    attrs = {}
    for w in words:
        if w in S.SIZES:
            attrs["size"] = w
        elif w in S.COLORS:
            attrs["color"] = w
        elif w in S.SHAPES:
            attrs["shape"] = w
    return [o for o in sc.objects if all(getattr(o, k) == v for k, v in attrs.items())]


def _one(sc, ref):
    objs = _resolve(sc, ref)
    assert len(objs) == 1, (ref, sc.key())
    return objs[0]


def _check(sc, qa):
    import re
    q, a = qa.question, qa.answer
    if qa.kind == "count":
        m = re.match(r"How many (.*) are there\?", q).group(1)
        if m == "shapes":
            n = len(sc.objects)
        else:
            w = m.split()[0]
            n = sum(w in (o.color, o.size) or T.plural(o.shape) == w for o in sc.objects)
        return a == T.number_word(n)
    if qa.kind in ("color", "shape", "size", "position"):
        ref = re.search(r"the (.*)\?$", q).group(1)
        ref = re.sub(r" (small or large|have)$", "", ref)
        o = _one(sc, ref)
        return a == (o.position if qa.kind == "position" else getattr(o, qa.kind))
    if qa.kind == "relation":
        m = re.match(r"Is the (.*) (left of|right of|above|below) the (.*)\?", q)
        x, rel, y = _one(sc, m.group(1)), m.group(2), _one(sc, m.group(3))
        truth = {"left of": x.col < y.col, "right of": x.col > y.col,
                 "above": x.row < y.row, "below": x.row > y.row}[rel]
        return a == ("yes" if truth else "no")
    if qa.kind == "existence":
        desc = re.match(r"Is there an? (.*)\?", q).group(1)
        return a == ("yes" if _resolve(sc, desc) else "no")
    if qa.kind == "identify":
        phrase = re.match(r"(?:What|Which shape) is (.*)\?", q).group(1)
        cell = [c for c in range(9) if T.pos_phrase(c) == phrase][0]
        o = sc.at(cell)
        return a == (o.describe() if o else "nothing")
    if qa.kind == "compare":
        m = re.match(r"Do the (.*) and the (.*) have the same (color|shape|size)\?", q)
        x, y = _one(sc, m.group(1)), _one(sc, m.group(2))
        return a == ("yes" if getattr(x, m.group(3)) == getattr(y, m.group(3)) else "no")
    raise AssertionError(qa.kind)


def test_yes_no_answers_are_balanced():
    rng = random.Random(4)
    for kind in ("relation", "existence", "compare"):
        answers = [qa.answer for sc in _scenes(2000, 9)
                   if (qa := T.question(sc, rng, kind)) is not None]
        yes = answers.count("yes") / len(answers)
        assert 0.45 < yes < 0.55, (kind, yes)


@pytest.mark.parametrize("kind", T.EDIT_KINDS)
def test_edits_change_only_what_they_say(kind):
    rng = random.Random(6)
    n = 0
    for sc in _scenes(400, 11):
        e = T.edit(sc, rng, kind)
        if e is None:
            continue
        n += 1
        src, tgt = set(sc.key()), set(e.target.key())
        if kind == "remove":
            assert len(tgt) == len(src) - 1 and tgt < src
        elif kind == "add":
            assert len(tgt) == len(src) + 1 and src < tgt
        else:
            assert len(src - tgt) == 1 and len(tgt - src) == 1
            (old,), (new,) = src - tgt, tgt - src
            changed = [i for i in range(4) if old[i] != new[i]]
            assert changed == {"move": [0], "recolor": [2], "resize": [3]}[kind]
        S.render(e.target)          # the target stays renderable (in-cell placement)
    assert n > 100


def test_edit_respects_forbidden_pairs():
    rng = random.Random(8)
    forbid = S.HOLDOUT_PAIRS
    for sc in _scenes(500, 12):
        sc = sc.with_objects([o for o in sc.objects if (o.color, o.shape) not in forbid])
        for kind in T.EDIT_KINDS:
            e = T.edit(sc, rng, kind, forbid=forbid)
            if e is not None:
                assert not e.target.has_holdout()


def test_normalize_answer():
    assert T.normalize_answer("The Red.") == "red"
    assert T.normalize_answer("2") == T.normalize_answer("two")
    assert T.normalize_answer("Top-Left") == "top left"

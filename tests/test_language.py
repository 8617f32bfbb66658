"""The wording grammar (data/language.py): intents worded many ways, split by frame and synonym
so that training never sees the held-out part, answers exact, templates as text.py writes them."""

import random
import re

import pytest

from unimm.data import language as L
from unimm.data import text as T
from unimm.data.shapes import CELL_NAMES, sample_scene

GROUPS = ([L.SIZE_WORDS, L.COLOR_WORDS, L.SHAPE_WORDS, L.CELL_PHRASES, L.CELL_NAMES_TO,
           L.RELATION_WORDS, L.ATTR_NOUNS, L.Q_FRAMES, L.EDIT_FRAMES],
          [L.OBJECT_WORDS, L.COLOR_NOUN, L.CAPTION_FRAMES, L.T2I_FRAMES, L.GENEVAL_FRAMES,
           L.OBJ_ORDER])
HELD_WORDS = re.compile(r"\b(huge|tiny|violet|aqua|figure|item|round shape|form)\b")


def _pairs():
    for table in GROUPS[0]:
        yield from table.values()
    yield from GROUPS[1]


def test_held_out_frames_and_synonyms_are_disjoint_from_training_ones():
    for train, held in _pairs():
        assert not set(train) & set(held), (train, held)
        assert train, "every group keeps a training (canonical) variant"


def _intents(n, seed=0):
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        s = sample_scene(rng)
        kind = rng.choice(T.QUESTION_KINDS)
        q = L.question(s, rng, kind)
        if q is not None:
            out.append((s, q))
    return out


def _wordings(split, n=600, seed=0):
    rng = random.Random(seed)
    w = L.Wording(split)
    texts = [q.text(w, rng) for _, q in _intents(n, seed)]
    for _ in range(n // 3):
        s = sample_scene(rng)
        texts.append(L.drawing_prompt(s, w, rng))
        texts.append(L.caption_request(w, rng))
        e = None
        while e is None:
            e = T.edit(sample_scene(rng), rng, rng.choice(T.EDIT_KINDS))
        texts.append(L.edit_intent(e.source, e.target, e.kind).text(w, rng))
    return texts


def test_training_wordings_never_use_held_out_words_and_held_out_ones_do_vary():
    train = _wordings("train")
    assert not [t for t in train if HELD_WORDS.search(t.lower())]
    held = _wordings("heldout", seed=1)
    assert len(set(held)) > 0.7 * len(held)       # caption requests have few frames
    assert sum(bool(HELD_WORDS.search(t.lower())) for t in held) > 0.1 * len(held)
    assert len(set(train)) > 0.7 * len(train)


def test_held_out_wordings_use_something_held_out():
    rng = random.Random(3)
    for _, q in _intents(200, seed=3):
        p = L.Phrasing(L.Wording("heldout"), rng)
        L._question_text(q, p)
        if p.used:
            continue
        # when a wording happened to use nothing held out, `word` draws again
        assert L.Phrasing(L.Wording("heldout"), rng).finish("x") is None


def test_template_wording_writes_text_py_frames():
    frames = {k: [re.compile("^" + re.escape(f).replace(r"\{", "{").replace(r"\}", "}")
                             .replace("{ref}", ".+").replace("{np}", ".+").replace("{a}", ".+")
                             .replace("{b}", ".+").replace("{rel}", "(left of|right of|above|below)")
                             .replace("{desc}", ".+").replace("{p}", ".+").replace("{attr}", ".+")
                             + "$") for f in fs]
              for k, fs in L.Q_TEMPLATE.items()}
    for s, q in _intents(300, seed=5):
        text = q.text(L.TEMPLATE, random.Random(0))
        assert any(f.match(text) for f in frames[q.kind]), (q.kind, text)
        assert not HELD_WORDS.search(text.lower())


@pytest.mark.parametrize("kind", T.QUESTION_KINDS)
def test_answers_are_true_of_the_scene(kind):
    """Each kind's answer, checked against the scene independently of how it was chosen."""
    rng = random.Random(7)
    for _ in range(60):
        s = sample_scene(rng)
        q = L.question(s, rng, kind)
        if q is None:
            continue
        f, objs = q.fields, s.objects
        if kind == "count":
            want = sum(all(getattr(o, k) == v for k, v in f.items()) for o in objs)
            assert q.answer == T.number_word(want)
        elif kind in ("color", "shape", "size", "position"):
            ref = f["ref"]
            hits = [o for o in objs if (o.cell == ref["cell"] if "cell" in ref else
                                        all(getattr(o, k) == v for k, v in ref.items()))]
            assert len(hits) == 1
            assert q.answer == (hits[0].position if kind == "position" else getattr(hits[0], kind))
        elif kind == "identify":
            o = s.at(f["cell"])
            assert q.answer == (o.describe() if o else "nothing")
        else:
            assert q.answer in ("yes", "no")


def test_drawing_prompts_name_every_object_in_any_order():
    rng = random.Random(11)
    orders = set()
    for _ in range(200):
        s = sample_scene(rng, n_objects=3)
        text = L.drawing_prompt(s, L.Wording("train"), rng).lower()
        for o in s.objects:
            assert any(c in text for c in L.COLOR_WORDS[o.color][0]), (text, o)
        first = min(s.objects, key=lambda o: min((text.find(c) for c in L.COLOR_WORDS[o.color][0]
                                                  if c in text), default=999))
        orders.add(first.cell == s.objects[0].cell)
    assert orders == {True, False}                       # not always in reading order


def test_surface_noise_is_undone_by_the_normaliser():
    rng = random.Random(2)
    for s, q in _intents(300, seed=9):
        text = q.text(L.TEMPLATE, random.Random(0))
        noisy = L.surface_noise(text, 1.0, rng)
        back = L.normalize_user_text(noisy)
        assert back.rstrip("?.!").lower() == text.rstrip("?.!").lower(), (text, noisy, back)
    assert L.normalize_user_text("Is the red circle left of the square?") == \
        "Is the red circle left of the square?"


def test_every_cell_and_kind_has_phrases():
    assert set(L.CELL_PHRASES) == set(CELL_NAMES) == set(L.CELL_NAMES_TO)
    with pytest.raises(ValueError, match="split"):
        L.Wording("test")

import numpy as np
import pytest

from unimm.data.shapes import HOLDOUT_PAIRS
from unimm.data.splits import (OFFSETS, SPLITS, ShapesWorld, WorldConfig,
                               training_generation_targets)
from unimm.data.geneval import CATEGORIES, prompt_suite, sample_prompt, target_scene


def test_splits_disjoint_by_seed():
    seeds = {s: {ShapesWorld(s).seed(i) for i in (0, 1, 10**6, 10**9 - 1)} for s in SPLITS}
    assert not (seeds["train"] & seeds["val"]) and not (seeds["val"] & seeds["test"])
    assert not (seeds["train"] & seeds["test"])
    with pytest.raises(IndexError):
        ShapesWorld("train").seed(10**9)
    assert len(set(OFFSETS.values())) == 3


def test_examples_are_deterministic():
    a, b = ShapesWorld("val"), ShapesWorld("val")
    for i in range(20):
        for task in ("caption", "vqa", "t2i", "edit"):
            x, y = a.example(i, task), b.example(i, task)
            assert x.text == y.text and x.target_text == y.target_text
            for k in ("image", "target_image"):
                u, v = getattr(x, k), getattr(y, k)
                assert (u is None and v is None) or np.array_equal(u, v)


@pytest.mark.slow
def test_holdout_never_leaks_into_training_generation_targets():
    w = ShapesWorld("train")
    n_scenes = 0
    for s in training_generation_targets(w, 3000):
        assert not s.has_holdout()
        n_scenes += 1
    assert n_scenes == 9000
    # ... but understanding data does show them (the synergy being measured)
    assert any(w.scene(i).has_holdout() for i in range(200))


def test_strict_holdout_never_shows_them_at_all():
    w = ShapesWorld("train", WorldConfig(holdout="strict"))
    assert not any(w.scene(i).has_holdout() for i in range(3000))
    assert not any(s.has_holdout() for s in training_generation_targets(w, 1000))


def test_holdout_mode_none_and_eval_splits_contain_them():
    assert any(s.has_holdout() for s in training_generation_targets(
        ShapesWorld("train", WorldConfig(holdout="none")), 500))
    test = ShapesWorld("test")
    assert all(test.holdout_t2i_example(i).target_scene.has_holdout() for i in range(50))
    for i in range(50):
        e = test.holdout_edit_example(i)
        assert e.target_scene.has_holdout() and not e.scene.has_holdout()
    with pytest.raises(ValueError, match="val or test"):
        ShapesWorld("train").holdout_t2i_example(0)


@pytest.mark.parametrize("split", ["val", "test"])
def test_eval_generation_examples_are_in_distribution(split):
    # the headline drawing metrics measure the combinations training drew; hold-out pairs are
    # measured on their own (above). Understanding scenes of val/test still show them.
    w = ShapesWorld(split)
    for i in range(300):
        assert not w.t2i_example(i).target_scene.has_holdout()
        e = w.edit_example(i)
        assert not (e.scene.has_holdout() or e.target_scene.has_holdout())
    assert any(w.scene(i).has_holdout() for i in range(200))
    # with no hold-out they are drawn like any other pair
    free = ShapesWorld(split, WorldConfig(holdout="none"))
    assert any(free.t2i_example(i).target_scene.has_holdout() for i in range(100))


def test_geneval_prompts_and_targets():
    import random
    rng = random.Random(0)
    for cat in CATEGORIES:
        for _ in range(100):
            p = sample_prompt(rng, cat, HOLDOUT_PAIRS)
            assert not (p.pairs() & HOLDOUT_PAIRS)
            s = target_scene(p, rng, forbid=HOLDOUT_PAIRS)
            assert p.satisfied_by(s) and not s.has_holdout()
    suite = prompt_suite(10)
    assert len(suite) == 60 and suite == prompt_suite(10)


def test_vqa_yes_no_balanced_at_dataset_level():
    w = ShapesWorld("train")
    by = {}
    for i in range(4000):
        ex = w.vqa_example(i)
        if ex.target_text in ("yes", "no"):
            by.setdefault(ex.kind, []).append(ex.target_text == "yes")
    for kind, v in by.items():
        assert 0.42 < np.mean(v) < 0.58, (kind, np.mean(v), len(v))


def test_bad_config_rejected():
    with pytest.raises(ValueError, match="holdout"):
        WorldConfig(holdout="sometimes")
    with pytest.raises(ValueError, match="split"):
        ShapesWorld("dev")


def test_canonical_caption_target_is_a_function_of_the_scene():
    from unimm.data.text import caption
    w = ShapesWorld("val")
    for i in range(50):
        ex = w.caption_example(i)
        assert ex.target_text == caption(ex.scene)            # no random phrasing in the target


def test_reasoning_targets_describe_the_scene_then_answer():
    from unimm.data.text import ANSWER_MARK, caption, final_answer
    from unimm.data.worlds import DataConfig
    plain, reasoned = ShapesWorld("train"), ShapesWorld("train", reasoning=True)
    for i in range(30):
        a, b = plain.example(i, "vqa"), reasoned.example(i, "vqa")
        assert a.target_text == a.meta["answer"] and ANSWER_MARK not in a.target_text
        assert b.target_text == f"{caption(b.scene)} {ANSWER_MARK} {a.target_text}"
        assert final_answer(b.target_text) == a.target_text and b.text == a.text
        # eval examples keep the plain answer whatever the training stream does
        assert reasoned.vqa_example(i).target_text == a.target_text
    assert final_answer("no mark here ") == "no mark here"
    with pytest.raises(ValueError, match="vqa_reasoning"):
        DataConfig(vqa_reasoning="chain")
    with pytest.raises(ValueError, match="shapes"):
        DataConfig(dataset="digits", vqa_reasoning="caption")


def test_reasoning_targets_tokenize_as_a_whole_and_mark_the_final_answer():
    from unimm.tokenizers.text import TextTokenizer
    from unimm.data.world import text_corpus
    from unimm.train.data import Encoder
    w = ShapesWorld("train", reasoning=True)
    tok = TextTokenizer.train(text_corpus(w, 200), 400)
    enc = Encoder(tok, None)
    for i in range(200):
        e = w.example(i, "vqa")
        ids, k = enc.answer_ids(e)
        assert ids == tok.encode(e.target_text)              # same ids as the whole string
        assert tok.decode(ids[k:]).strip() == e.meta["answer"] and 0 < k < len(ids)
    plain = ShapesWorld("train").example(0, "vqa")
    ids, k = enc.answer_ids(plain)
    assert k is None and ids == tok.encode(plain.target_text)

import random

import numpy as np
import pytest

from unimm.data.digits import (DIGIT_SPLITS, N_DIGITS, PROMPT_TEMPLATES, QUESTIONS, Digits,
                               answer, parse_digit_answer, prompt, raw_scans, split_indices,
                               to_8x8, upsample)
from unimm.data.digits_judge import (generation_accuracy, generation_report, get_digit_judge,
                                     recognition_accuracy)


# ----------------------------------------------------------------------------------------------
# Splits and images

@pytest.mark.slow
def test_splits_disjoint_cover_and_stratified():
    idx = split_indices()
    _, labels = raw_scans()
    allidx = np.concatenate([idx[s] for s in DIGIT_SPLITS])
    assert len(allidx) == len(np.unique(allidx)) == N_DIGITS == len(labels)
    assert set(allidx.tolist()) == set(range(N_DIGITS))
    for digit in range(10):
        n = int((labels == digit).sum())
        counts = {s: int((labels[idx[s]] == digit).sum()) for s in DIGIT_SPLITS}
        assert abs(counts["test"] - 0.2 * n) <= 1 and abs(counts["val"] - 0.1 * n) <= 1
        assert min(counts.values()) > 0


def test_same_object_same_images():
    a, b = Digits("val", 16), Digits("val", 16)
    ia, la = a.arrays()
    ib, lb = b.arrays()
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(la, lb)
    np.testing.assert_array_equal(a.image(3), a.image(3))
    np.testing.assert_array_equal(a.image(3), ia[3])
    assert a.label(3) == la[3]
    a.arrays()[0][:] = 0                     # callers get copies: the dataset is unchanged
    np.testing.assert_array_equal(a.arrays()[0], ia)


@pytest.mark.parametrize("size", [8, 16, 32])
def test_image_shape_dtype_and_values(size):
    ds = Digits("test", size)
    im = ds.image(0)
    assert im.shape == (size, size, 3) and im.dtype == np.uint8
    assert (im[..., 0] == im[..., 1]).all() and (im[..., 1] == im[..., 2]).all()
    images, labels = ds.arrays()
    assert images.shape == (len(ds), size, size, 3) and labels.dtype == np.int64
    assert images.max() == 255 and images.min() == 0       # value 16 -> 255, background black
    if size == 8:                                           # bilinear is the identity at 8x8
        want = np.rint(raw_scans()[0][ds.indices] * 255 / 16)
        np.testing.assert_array_equal(images[..., 0], want)
        np.testing.assert_array_equal(images[0, ..., 0], np.rint(ds.scan(0) * 255 / 16))


def _blur_8x8() -> np.ndarray:
    # Area-averaging a bilinear upsample: each 8x8 value gets 1/8 of each neighbour (borders clamp).
    k = np.diag(np.full(8, 0.75)) + np.diag(np.full(7, 0.125), 1) + np.diag(np.full(7, 0.125), -1)
    k[0, 0] = k[-1, -1] = 0.875
    return k


@pytest.mark.parametrize("size", [16, 32, 64])
def test_downsample_reproduces_the_scan(size):
    scans = raw_scans()[0][:200]
    back = to_8x8(upsample(scans, size))
    k = _blur_8x8()
    np.testing.assert_allclose(back, k @ scans @ k.T, atol=16 / 255)   # up to uint8 rounding
    assert np.abs(back - scans).mean() < 1.5                          # on the 0..16 scale


@pytest.mark.parametrize("bad", [0, 4, 12, -8, 30, 32.0, True, "32"])
def test_bad_image_size(bad):
    with pytest.raises(ValueError, match="multiple of 8"):
        Digits("train", bad)


def test_bad_split_and_index():
    with pytest.raises(ValueError, match="train, val, test"):
        Digits("dev")
    ds = Digits("val", 8)
    with pytest.raises(IndexError, match=r"\[0, 179\)"):
        ds.image(len(ds))


# ----------------------------------------------------------------------------------------------
# Text

def test_prompts_questions_answers():
    assert prompt(7) == "the digit 7"
    assert answer(7) == "seven"
    rng = random.Random(0)
    seen = {prompt(label, rng) for label in range(10) for _ in range(20)}
    assert len(seen) > 20
    for label in range(10):
        for t in PROMPT_TEMPLATES:                         # every phrasing names its digit
            assert parse_digit_answer(t.format(d=label, w=answer(label))) == label
        assert parse_digit_answer(answer(label)) == label
    assert QUESTIONS[0] == "What digit is this?"
    with pytest.raises(ValueError, match="0..9"):
        prompt(10)


@pytest.mark.parametrize("text,want", [
    ("7", 7), ("seven", 7), ("the digit 7", 7), ("Seven.", 7), ("It's a 0!", 0), ("zero", 0),
    ("seven (7)", 7), ("17", None), ("3 or 4", None), ("banana", None), ("", None),
    ("sevens", None), (None, None),
])
def test_parse_digit_answer(text, want):
    assert parse_digit_answer(text) == want


def test_recognition_accuracy():
    assert recognition_accuracy(["seven", "8", "no idea", "the digit 1"], [7, 8, 9, 2]) == 0.5
    with pytest.raises(ValueError, match="expected 2 labels"):
        recognition_accuracy(["1", "2"], [1])


# ----------------------------------------------------------------------------------------------
# The judge

def test_judge_trained_on_train_only():
    judge = get_digit_judge()
    idx = split_indices()
    np.testing.assert_array_equal(judge.train_indices, idx["train"])
    assert not set(judge.train_indices.tolist()) & set(idx["test"].tolist())
    svc = judge.classifier.calibrated_classifiers_[0].estimator
    assert svc.shape_fit_ == (len(idx["train"]), 64)       # what libsvm actually saw
    assert get_digit_judge() is judge


def test_judge_accuracy_on_held_out_test():
    images, labels = Digits("test", 32).arrays()
    judge = get_digit_judge()
    assert (judge.classify(images) == labels).mean() >= 0.97
    probs = judge.probabilities(images[:5])
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-6)
    # any multiple-of-8 size, and lists of images, read the same digits
    small, _ = Digits("test", 16).arrays()
    assert (judge.classify(list(small[:50])) == labels[:50]).mean() >= 0.95


def test_generation_accuracy_real_vs_shuffled():
    images, labels = Digits("test", 32).arrays()
    assert generation_accuracy(images, labels) >= 0.97
    wrong = np.random.default_rng(0).permutation(labels)
    assert generation_accuracy(images, wrong) < 0.2                 # chance is ~0.1
    report = generation_report(images, labels)
    assert report["recognised"] >= 0.99 and set(report["per_digit"]) == set(range(10))


def test_unrecognisable_images_are_flagged():
    judge = get_digit_judge()
    rng = np.random.default_rng(0)
    blank = np.zeros((4, 32, 32, 3), np.uint8)
    noise = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    for junk in (blank, noise):
        verdict = judge.judge(junk)
        assert not verdict.recognised.any()
        # whatever digit the classifier guesses, it is not counted
        assert generation_accuracy(junk, verdict.labels) == 0.0
    assert generation_report(blank, [1] * 4)["accuracy_unguarded"] == 1.0  # why the guard exists


def test_judge_rejects_bad_input():
    judge = get_digit_judge()
    with pytest.raises(ValueError, match="multiple of 8"):
        judge.classify(np.zeros((2, 12, 12, 3), np.uint8))
    with pytest.raises(ValueError, match="list"):
        judge.classify(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="expected 3 labels"):
        generation_accuracy(np.zeros((3, 8, 8, 3), np.uint8), [1, 2])

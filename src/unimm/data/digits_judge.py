"""An independent judge for digit images: an RBF SVM trained on the real digits' train split only,
reading any image back through area-averaging to the scans' 8x8, 0..16 form.

Notable choices:
- Classifier picked by val accuracy among SVC(gamma=0.001, C=10) 0.989 (1.000 on val upsampled
  to 32 and read back), 3-NN 0.989 (0.978), logistic regression 0.972, a 64-unit MLP 0.972.
  Probabilities by sigmoid calibration on 5 unshuffled folds of train (`CalibratedClassifierCV(
  ..., ensemble=False)`, sklearn's replacement for `SVC(probability=True)`); the label is their
  argmax. Held-out test accuracy: 0.986 on the raw scans, 0.983 at 32x32 (`Digits("test")`).
- Fit at first use (~0.15 s), never pickled; deterministic (libsvm, unshuffled folds);
  `get_digit_judge()` caches one instance.
- Input: (n, s, s, 3) uint8 arrays or lists of images (paths, PIL, arrays) at any side that is a
  multiple of 8; colour images are read through the mean of their channels.
- Unrecognisable images: a classifier's probability is no guard off the data (a blank image is
  read as "1" with p = 0.99), so an image counts as *recognised* only when p >= MIN_CONFIDENCE and
  its Euclidean distance (8x8, 0..16) to the nearest train scan is at most DISTANCE_MARGIN x the
  largest such distance among val scans (25.5, so ~31.9). Measured: real test digits <= 28.3 at
  any size; a blank image 46.8, pixel-shuffled digits >= 44, a lone square blob 38.
- `generation_accuracy` counts an image as correct only when it is recognised *and* read as the
  intended digit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .digits import GRID, parse_digit_answer, raw_scans, split_indices, to_8x8
from .images import load_image

SVC_PARAMS = {"gamma": 0.001, "C": 10.0}
CALIBRATION_FOLDS = 5
MIN_CONFIDENCE = 0.5
DISTANCE_MARGIN = 1.25


@dataclass(frozen=True)
class DigitVerdict:
    """What the judge says about n images."""

    labels: np.ndarray        # (n,) int64, the most probable digit
    confidence: np.ndarray    # (n,) float64, its calibrated probability
    distance: np.ndarray      # (n,) float64, to the nearest train scan (8x8, 0..16 scale)
    recognised: np.ndarray    # (n,) bool, confidence >= MIN_CONFIDENCE and distance <= max_distance


def _as_batch(images) -> np.ndarray:
    """(n, s, s, 3) uint8 array or a list of images -> (n, 64) float64 features on 0..16."""
    accepted = ("an (n, s, s, 3) uint8 array or a list of images (paths, PIL images or (s, s, 3) "
                "arrays), s a multiple of 8")
    if isinstance(images, np.ndarray):
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: array of shape {images.shape}; expected {accepted} "
                             "(wrap a single image in a list)")
        if images.dtype != np.uint8:
            images = list(images)             # floats in [0, 1] etc. go through load_image
    if isinstance(images, np.ndarray):
        batch = [images]
    elif isinstance(images, (list, tuple)):
        batch = [load_image(x, what=f"image {i}", allow_gray=True)[None]
                 for i, x in enumerate(images)]
    else:
        raise ValueError(f"images: got {type(images).__name__}; expected {accepted}")
    feats = []
    for b in batch:                           # each b: (1 or n, h, w, 3) uint8
        h, w = b.shape[1:3]
        if h != w or h < GRID or h % GRID:
            raise ValueError(f"images: {h}x{w} pixels; expected square images whose side is a "
                             f"multiple of {GRID} (8, 16, 32, ...)")
        feats.append(to_8x8(b).reshape(len(b), GRID * GRID))
    if not feats:
        return np.zeros((0, GRID * GRID))
    return np.concatenate(feats)


class DigitJudge:
    """Classifier of digit images, fit on the train split at construction (fast: a linear
    model on 1,797 small images)."""

    def __init__(self):
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.svm import SVC

        scans, labels = raw_scans()
        idx = split_indices()
        self.train_indices = idx["train"]
        self._train = scans[self.train_indices].reshape(-1, GRID * GRID)   # (n_train, 64)
        self._train_sq = (self._train ** 2).sum(1)
        self.classifier = CalibratedClassifierCV(SVC(**SVC_PARAMS), cv=CALIBRATION_FOLDS,
                                                 ensemble=False)
        self.classifier.fit(self._train, labels[self.train_indices])
        val = scans[idx["val"]].reshape(-1, GRID * GRID)
        self.max_distance = DISTANCE_MARGIN * float(self._nearest_distance(val).max())

    def _nearest_distance(self, feats: np.ndarray) -> np.ndarray:
        d2 = (feats ** 2).sum(1)[:, None] - 2 * feats @ self._train.T + self._train_sq[None]
        return np.sqrt(np.maximum(d2.min(1), 0.0))                        # (n,)

    def probabilities(self, images) -> np.ndarray:
        """(n, 10) calibrated class probabilities."""
        feats = _as_batch(images)
        if not len(feats):
            return np.zeros((0, 10))
        return self.classifier.predict_proba(feats)

    def classify(self, images) -> np.ndarray:
        """(n,) int64 most probable digit of each image."""
        return self.probabilities(images).argmax(1).astype(np.int64)

    def judge(self, images) -> DigitVerdict:
        feats = _as_batch(images)
        if not len(feats):
            empty = np.zeros(0)
            return DigitVerdict(empty.astype(np.int64), empty, empty, empty.astype(bool))
        probs = self.classifier.predict_proba(feats)                      # (n, 10)
        conf = probs.max(1)
        dist = self._nearest_distance(feats)
        return DigitVerdict(labels=probs.argmax(1).astype(np.int64), confidence=conf,
                            distance=dist,
                            recognised=(conf >= MIN_CONFIDENCE) & (dist <= self.max_distance))


@lru_cache(maxsize=1)
def get_digit_judge() -> DigitJudge:
    return DigitJudge()


# ----------------------------------------------------------------------------------------------
# Metrics

def _labels(labels, n: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{what}: expected {n} labels (one per item), got shape {labels.shape}")
    if n and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{what}: labels must be integers in 0..9")
    return labels.astype(np.int64)


def generation_report(images, intended_labels, judge: DigitJudge | None = None) -> dict:
    """accuracy (recognised and the intended digit), accuracy_unguarded (the intended digit,
    recognised or not), recognised (fraction), and accuracy per intended digit."""
    verdict = (judge or get_digit_judge()).judge(images)
    n = len(verdict.labels)
    want = _labels(intended_labels, n, "intended_labels")
    hit = verdict.recognised & (verdict.labels == want)
    nan = float("nan")
    return {
        "n": n,
        "accuracy": float(hit.mean()) if n else nan,
        "accuracy_unguarded": float((verdict.labels == want).mean()) if n else nan,
        "recognised": float(verdict.recognised.mean()) if n else nan,
        "per_digit": {d: float(hit[want == d].mean()) for d in range(10) if (want == d).any()},
    }


def generation_accuracy(images, intended_labels, judge: DigitJudge | None = None) -> float:
    """Fraction of images the judge recognises as their intended digit."""
    return generation_report(images, intended_labels, judge)["accuracy"]


def recognition_accuracy(pred_answers: Sequence[str], labels) -> float:
    """Fraction of free-text answers that name the right digit (`parse_digit_answer`)."""
    want = _labels(labels, len(pred_answers), "labels")
    if not len(want):
        return float("nan")
    return float(np.mean([parse_digit_answer(a) == w for a, w in zip(pred_answers, want)]))

"""Real handwritten digits: scikit-learn's bundled `load_digits` (1,797 8x8 scans, values 0..16,
shipped inside the package, no download), split, upsampled to RGB, with prompts and answers.

Notable choices:
- Split: stratified per digit with a fixed seed (SPLIT_SEED): round(20 %) of each digit to test,
  round(10 %) to val, the rest to train (1,259 / 179 / 359). Every split holds every digit; the
  three are disjoint and cover all 1,797 samples. Indices are sorted within a split.
- Pixels: white strokes on black, value v -> round(v * 255 / 16) on three equal channels.
- Upsampling to `image_size` (a multiple of 8, >= 8): bilinear with half-pixel centres and
  clamped borders, i.e. exactly PIL's `Image.BILINEAR`, written as one (S, 8) matrix so a batch is
  one einsum. It is smooth, the same picture at every size, and the identity at size 8.
  Area-averaging back to 8x8 (`to_8x8`) returns the original blurred by [1/8, 3/4, 1/8] along
  each axis ([7/8, 1/8] at the borders): mean error ~1.1 on the 0..16 scale, max ~6.3.
- Text: `prompt` for generation (canonical "the digit 7"), `QUESTIONS` for recognition, `answer`
  gives the digit as a word ("seven"); `parse_digit_answer` reads "7", "seven", "the digit 7".

Shapes: n images, s = image_size, h w = the 8x8 grid, c = 3 channels.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache
from numbers import Integral

import numpy as np
from einops import reduce

from .text import NUMBER_WORDS

DIGIT_SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_SEED = 0
SPLIT_FRACTIONS: dict[str, float] = {"test": 0.2, "val": 0.1}     # train takes the rest
N_DIGITS = 1797
GRID = 8                 # the scans are 8x8
MAX_VALUE = 16           # scan values lie in 0..16

PROMPT_TEMPLATES: tuple[str, ...] = (
    "the digit {d}",                  # canonical
    "a handwritten {d}",
    "draw the digit {w}",
    "the number {w}, handwritten",
    "write the digit {d}",
    "a picture of the digit {w}",
)
QUESTIONS: tuple[str, ...] = (
    "What digit is this?",            # canonical
    "Which digit is shown?",
    "What number is written here?",
    "Which digit is in the picture?",
    "Read the handwritten digit.",
)


# ----------------------------------------------------------------------------------------------
# Raw data and splits

@lru_cache(maxsize=1)
def raw_scans() -> tuple[np.ndarray, np.ndarray]:
    """(N, 8, 8) float64 scans on 0..16 and (N,) int64 labels, read-only."""
    from sklearn.datasets import load_digits    # imported here: sklearn is slow to import
    d = load_digits()
    scans = np.asarray(d.images, dtype=np.float64)
    labels = np.asarray(d.target, dtype=np.int64)
    scans.setflags(write=False)
    labels.setflags(write=False)
    return scans, labels


@lru_cache(maxsize=1)
def split_indices() -> dict[str, np.ndarray]:
    """Indices into `load_digits()` of each split (sorted, read-only)."""
    _, labels = raw_scans()
    rng = np.random.default_rng(SPLIT_SEED)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in DIGIT_SPLITS}
    for digit in range(10):
        idx = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(SPLIT_FRACTIONS["test"] * len(idx))
        n_val = round(SPLIT_FRACTIONS["val"] * len(idx))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    out = {}
    for split, chunks in parts.items():
        out[split] = np.sort(np.concatenate(chunks)).astype(np.int64)
        out[split].setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------
# Pixels: 8x8 scans <-> RGB images

def check_digit_image_size(image_size) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, Integral) \
            or image_size < GRID or image_size % GRID:
        raise ValueError(f"image_size must be an integer multiple of {GRID} that is >= {GRID} "
                         f"(8, 16, 24, 32, ...; the scans are 8x8), got {image_size!r}")
    return int(image_size)


@lru_cache(maxsize=16)
def _bilinear_matrix(size: int) -> np.ndarray:
    """(size, 8) weights of PIL-style bilinear upsampling: half-pixel centres, clamped borders."""
    k = size // GRID
    src = np.clip((np.arange(size) + 0.5) / k - 0.5, 0, GRID - 1)   # source coordinate per pixel
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, GRID - 1)
    frac = src - lo
    m = np.zeros((size, GRID))
    np.add.at(m, (np.arange(size), lo), 1 - frac)
    np.add.at(m, (np.arange(size), hi), frac)
    m.setflags(write=False)
    return m


def upsample(scans: np.ndarray, image_size: int) -> np.ndarray:
    """(n, 8, 8) scans on 0..16 -> (n, s, s, 3) uint8 RGB, white on black."""
    size = check_digit_image_size(image_size)
    m = _bilinear_matrix(size)
    x = np.asarray(scans, dtype=np.float64) * (255.0 / MAX_VALUE)
    up = np.einsum("sh,nhw,tw->nst", m, x, m)                       # (n, s, s)
    up = np.clip(np.rint(up), 0, 255).astype(np.uint8)
    return np.repeat(up[..., None], 3, axis=-1)                     # (n, s, s, 3)


def to_8x8(images: np.ndarray) -> np.ndarray:
    """(n, s, s, 3) uint8 -> (n, 8, 8) float64 on the scans' 0..16 scale, by averaging each
    (s/8)^2 block over its pixels and the three channels."""
    x = reduce(np.asarray(images, dtype=np.float64), "n (h a) (w b) c -> n h w", "mean",
               h=GRID, w=GRID)
    return x * (MAX_VALUE / 255.0)


# ----------------------------------------------------------------------------------------------
# The dataset

class Digits:
    """One split of the real digits as RGB images of side `image_size`."""

    def __init__(self, split: str = "train", image_size: int = 32):
        if split not in DIGIT_SPLITS:
            raise ValueError(f"unknown split {split!r}; known: {', '.join(DIGIT_SPLITS)}")
        self.split = split
        self.image_size = check_digit_image_size(image_size)
        self.indices = split_indices()[split]          # into load_digits(), read-only
        self._images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        return f"Digits(split={self.split!r}, image_size={self.image_size}, n={len(self)})"

    def _all_images(self) -> np.ndarray:
        if self._images is None:
            self._images = upsample(raw_scans()[0][self.indices], self.image_size)
            self._images.setflags(write=False)
        return self._images

    def _check_index(self, i) -> int:
        if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < len(self):
            raise IndexError(f"index must be an integer in [0, {len(self)}) for the "
                             f"{self.split} split, got {i!r}")
        return int(i)

    def image(self, i: int) -> np.ndarray:
        """(s, s, 3) uint8 image of example i."""
        return self._all_images()[self._check_index(i)].copy()

    def label(self, i: int) -> int:
        return int(raw_scans()[1][self.indices[self._check_index(i)]])

    def scan(self, i: int) -> np.ndarray:
        """The original (8, 8) float64 scan on 0..16."""
        return raw_scans()[0][self.indices[self._check_index(i)]].copy()

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """All images (n, s, s, 3) uint8 and labels (n,) int64, as fresh arrays."""
        return self._all_images().copy(), raw_scans()[1][self.indices].copy()


# ----------------------------------------------------------------------------------------------
# Text: prompts, questions, answers

def _check_label(label) -> int:
    if isinstance(label, bool) or not isinstance(label, Integral) or not 0 <= label <= 9:
        raise ValueError(f"a digit label must be an integer in 0..9, got {label!r}")
    return int(label)


def prompt(label: int, rng: random.Random | None = None) -> str:
    """A generation prompt for `label`: canonical "the digit 7" without rng, else one of
    PROMPT_TEMPLATES."""
    label = _check_label(label)
    template = PROMPT_TEMPLATES[0] if rng is None else rng.choice(PROMPT_TEMPLATES)
    return template.format(d=label, w=NUMBER_WORDS[label])


def question(rng: random.Random | None = None) -> str:
    """A recognition question: canonical "What digit is this?" without rng."""
    return QUESTIONS[0] if rng is None else rng.choice(QUESTIONS)


def answer(label: int) -> str:
    """The canonical answer: the digit as a word ("seven")."""
    return NUMBER_WORDS[_check_label(label)]


_DIGIT_TOKENS = {**{str(i): i for i in range(10)}, **{w: i for i, w in enumerate(NUMBER_WORDS)}}


def parse_digit_answer(text: str) -> int | None:
    """The digit an answer names ("7", "seven", "the digit 7", "Seven."), or None when it names
    none, several different ones, or a multi-digit number ("17")."""
    if not isinstance(text, str):
        return None
    found = {_DIGIT_TOKENS[t] for t in re.findall(r"[a-z0-9]+", text.lower()) if t in _DIGIT_TOKENS}
    if re.search(r"\d\d", text):
        return None
    return found.pop() if len(found) == 1 else None

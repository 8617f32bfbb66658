"""Mild perturbations of rendered scenes, standing in for what a tokenizer reconstruction or a
generator does to an image: sensor-like noise, a slight blur, a few wrong pixels, JPEG, and
all of them at once. Used by the judge's self-test."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

PERTURBATIONS: tuple[str, ...] = ("noise", "blur", "pixels", "jpeg", "mixed")


def _blur(img: np.ndarray, sigma: float = 0.6) -> np.ndarray:
    r = 1
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in range(3)]
        p = np.pad(out, pad, mode="edge")
        out = sum(k[i] * np.take(p, range(i, i + img.shape[axis]), axis=axis)
                  for i in range(2 * r + 1))
    return out


def _noise(img: np.ndarray, rng: np.random.Generator, sigma: float = 10.0) -> np.ndarray:
    return img.astype(np.float32) + rng.normal(0, sigma, img.shape)


def _pixels(img: np.ndarray, rng: np.random.Generator, frac: float = 0.01) -> np.ndarray:
    out = img.astype(np.float32).copy()
    h, w = img.shape[:2]
    k = max(1, int(round(frac * h * w)))
    ys, xs = rng.integers(0, h, k), rng.integers(0, w, k)
    out[ys, xs] = rng.integers(0, 256, (k, 3))
    return out


def _jpeg(img: np.ndarray, quality: int = 90) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def perturb(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Return a perturbed uint8 copy of an (H, W, 3) uint8 image."""
    if kind == "noise":
        return _u8(_noise(img, rng))
    if kind == "blur":
        return _u8(_blur(img))
    if kind == "pixels":
        return _u8(_pixels(img, rng))
    if kind == "jpeg":
        return _u8(_jpeg(img))
    if kind == "mixed":
        x = _u8(_blur(img, 0.5))
        x = _u8(_noise(x, rng, 6.0))
        return _u8(_pixels(x, rng, 0.005))
    raise ValueError(f"unknown perturbation {kind!r}; known: {', '.join(PERTURBATIONS)}")

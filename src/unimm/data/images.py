"""Image input at the library's edges: paths, PIL images and arrays in; RGB uint8 arrays out.

Every failure raises `ImageError` whose message says what was wrong and what is accepted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..utils.io import atomic_path

MAX_PIXELS = 4096 * 4096        # refuse decompression bombs before decoding
MAX_FILE_BYTES = 64 * 2**20
ACCEPTED = "an RGB image as a path (PNG/JPEG/...), a PIL.Image, or an (H, W, 3) uint8 array"


class ImageError(ValueError):
    """A user-supplied image cannot be used."""


def _from_pil(im: Image.Image, what: str, allow_gray: bool) -> np.ndarray:
    if im.width * im.height > MAX_PIXELS:
        raise ImageError(f"{what}: {im.width}x{im.height} pixels is over the limit of "
                         f"{MAX_PIXELS} pixels; pass a smaller image")
    if im.mode == "P":                                   # a palette is just a compact RGB(A)
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA"):
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            raise ImageError(f"{what}: the image has transparent pixels (mode {im.mode}); "
                             "flatten it onto a background and pass RGB")
        im = im.convert("RGB" if im.mode == "RGBA" else "L")
    if im.mode in ("L", "1", "I;16", "I", "F"):
        if not allow_gray:
            raise ImageError(f"{what}: a greyscale image (mode {im.mode}) was given where colour "
                             f"matters; pass {ACCEPTED}")
        im = im.convert("L").convert("RGB")
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageError(f"{what}: cannot convert mode {im.mode} to RGB ({e})") from None
    return np.asarray(im, dtype=np.uint8).copy()


def load_image(x, *, what: str = "image", allow_gray: bool = False) -> np.ndarray:
    """Return an (H, W, 3) uint8 array from a path, PIL image or array."""
    if isinstance(x, (str, os.PathLike)):
        p = Path(x)
        if p.is_dir():
            raise ImageError(f"{what}: {p} is a folder; give an image file ({ACCEPTED})")
        if not p.is_file():
            raise ImageError(f"{what}: no such file: {p}")
        if p.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"{what}: {p} is {p.stat().st_size} bytes, over the "
                             f"{MAX_FILE_BYTES} byte limit")
        try:
            with Image.open(p) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise ImageError(f"{what}: {p} is {im.width}x{im.height} pixels, over the "
                                     f"limit of {MAX_PIXELS}; pass a smaller image")
                im.load()
                return _from_pil(im, f"{what} {p}", allow_gray)
        except ImageError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
                Image.DecompressionBombError) as e:
            raise ImageError(f"{what}: cannot read {p} as an image ({type(e).__name__}: {e}); "
                             f"accepted: {ACCEPTED}") from None
    if isinstance(x, Image.Image):
        return _from_pil(x, what, allow_gray)
    if isinstance(x, np.ndarray) or hasattr(x, "__array__"):
        a = np.asarray(x)
        if a.ndim == 2 and allow_gray:
            a = np.repeat(a[..., None], 3, axis=-1)
        if a.ndim != 3 or a.shape[-1] not in (3, 4):
            raise ImageError(f"{what}: array of shape {a.shape}; expected (H, W, 3)")
        if a.shape[-1] == 4:
            if a.dtype == np.uint8 and a[..., 3].min() == 255:
                a = a[..., :3]
            else:
                raise ImageError(f"{what}: (H, W, 4) array with transparency; pass (H, W, 3) RGB")
        if a.shape[0] * a.shape[1] > MAX_PIXELS:
            raise ImageError(f"{what}: {a.shape[1]}x{a.shape[0]} pixels is over the limit of "
                             f"{MAX_PIXELS}")
        if a.dtype == np.uint8:
            return np.ascontiguousarray(a)
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise ImageError(f"{what}: float array contains NaN or infinity")
            lo, hi = float(a.min()), float(a.max())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ImageError(f"{what}: float array values span [{lo:.3g}, {hi:.3g}]; "
                                 "float images must lie in [0, 1]")
            return (np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)
        raise ImageError(f"{what}: array of dtype {a.dtype}; expected uint8 or float in [0, 1]")
    raise ImageError(f"{what}: got {type(x).__name__}; expected {ACCEPTED}")


def save_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB array as PNG atomically (write a temp file, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(np.asarray(array, dtype=np.uint8)).save(tmp, format="PNG")
    return path

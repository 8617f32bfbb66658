"""PNG figures people look at: captioned image grids and training curves (matplotlib, Agg)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from .io import atomic_path


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two (H, W, 3) uint8 images next to each other with a 2-pixel white gap (source | output)."""
    gap = np.full((a.shape[0], 2, 3), 255, dtype=np.uint8)
    return np.concatenate([a, gap, b], axis=1)


def image_grid(images, captions, path, ncols: int | None = None, title: str | None = None,
               wrap: int = 28, colors=None) -> Path:
    """Save images (each (H, W, 3) uint8) with wrapped captions underneath as one PNG.

    `colors` optionally gives a text colour per caption (e.g. green/red for judge verdicts)."""
    plt = _plt()
    n = len(images)
    ncols = ncols or min(n, 8)
    nrows = math.ceil(n / ncols)
    # a model's text may hold control characters no font draws: shown as "?"
    captions = ["".join(ch if ch.isprintable() or ch == "\n" else "?" for ch in c)
                for c in captions]
    lines = [textwrap.fill(c, wrap).replace("\n\n", "\n") for c in captions]
    h, w = np.asarray(images[0]).shape[:2]
    img_h = 1.7                                        # inches per image row
    img_w = img_h * w / h
    text_h = 0.13 * max((c.count("\n") + 1 for c in lines), default=0) + 0.1
    title_h = 0.35 if title else 0.05
    fig_w = ncols * (max(img_w, 0.075 * wrap) + 0.15)
    fig_h = nrows * (img_h + text_h) + title_h
    fig = plt.figure(figsize=(fig_w, fig_h))
    for k in range(n):
        r, c = divmod(k, ncols)
        left = c / ncols + 0.5 / ncols - (img_w / fig_w) / 2
        bottom = 1 - (title_h + r * (img_h + text_h) + img_h) / fig_h
        ax = fig.add_axes((left, bottom, img_w / fig_w, img_h / fig_h))
        ax.imshow(np.asarray(images[k]), interpolation="nearest")
        ax.axis("off")
        fig.text(c / ncols + 0.5 / ncols, bottom - 0.04 / fig_h, lines[k], ha="center", va="top",
                 fontsize=7, color=(colors[k] if colors else "black"))
    if title:
        fig.text(0.5, 1 - 0.05 / fig_h, title, ha="center", va="top", fontsize=10)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def curves(xs, series: dict[str, list[float]], path, xlabel: str = "step",
           title: str | None = None, logy: bool = False) -> Path:
    """Save one or more metric curves against xs as a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, ys in series.items():
        ax.plot(xs[:len(ys)], ys, label=name)
    ax.set_xlabel(xlabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path

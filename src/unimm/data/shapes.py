"""ShapesWorld scenes: sampling and rendering.

A scene holds 1-3 objects, each a (shape, colour, size) placed in its own cell of a 3x3 grid,
with a little positional jitter inside the cell. Everything is a pure function of a seed.

Notable choices:
- Pixel-exact templates (no anti-aliasing): shapes are stamped from boolean masks, so rendering
  is a few array writes (>10k scenes/s per core) and the judge can invert it by template matching.
- Each object stays inside its cell and leaves the cell's last row and column empty, so objects
  in neighbouring cells never touch (the judge reads cells independently).
- Sizes scale with the image: small = round(5/32 W), large = round(8/32 W). At W=32 every
  (shape, size) template is distinct; at 24 or 28 the 4-pixel small circle equals the small
  diamond, hence MIN_IMAGE_SIZE = 32 (checked in tests/test_shapes.py).
- The background is black, so a blurred edge is a darker copy of its colour (chromaticity kept).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 210, 220),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
GRID = 3
MAX_OBJECTS = 3
# Row-major cell names; "top" is the top-middle cell, "left" the middle-left one.
CELL_NAMES: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 256
DEFAULT_IMAGE_SIZE = 32
PRESETS: dict[str, int] = {"default": 32, "64": 64}

# (colour, shape) pairs never drawn as generation/editing targets in training (see splits.py).
# One per shape and at most one per colour, so every attribute is still seen drawn elsewhere.
HOLDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({
    ("red", "triangle"),
    ("green", "cross"),
    ("blue", "circle"),
    ("yellow", "diamond"),
    ("purple", "square"),
})


@dataclass(frozen=True, order=True)
class Obj:
    """One object. (x, y) is the top-left pixel of its template; cell is 0..8, row-major."""

    cell: int
    shape: str
    color: str
    size: str
    x: int = 0
    y: int = 0

    @property
    def row(self) -> int:
        return self.cell // GRID

    @property
    def col(self) -> int:
        return self.cell % GRID

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell]

    def key(self) -> tuple[int, str, str, str]:
        """What the judge can see and compare: everything but the jitter."""
        return (self.cell, self.shape, self.color, self.size)

    def describe(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    image_size: int = DEFAULT_IMAGE_SIZE

    def __post_init__(self):
        cells = [o.cell for o in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a cell: {cells}")
        # Canonical order (reading order) so equal scenes compare equal.
        object.__setattr__(self, "objects", tuple(sorted(self.objects, key=lambda o: o.cell)))

    def key(self) -> tuple[tuple[int, str, str, str], ...]:
        return tuple(o.key() for o in self.objects)

    def at(self, cell: int) -> Obj | None:
        for o in self.objects:
            if o.cell == cell:
                return o
        return None

    def pairs(self) -> set[tuple[str, str]]:
        return {(o.color, o.shape) for o in self.objects}

    def has_holdout(self) -> bool:
        return bool(self.pairs() & HOLDOUT_PAIRS)

    def with_objects(self, objects) -> "Scene":
        return replace(self, objects=tuple(objects))

    def to_dict(self) -> dict:
        return {
            "image_size": self.image_size,
            "objects": [
                {"shape": o.shape, "color": o.color, "size": o.size, "cell": o.cell,
                 "position": o.position, "x": o.x, "y": o.y}
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = [Obj(cell=int(o["cell"]), shape=o["shape"], color=o["color"], size=o["size"],
                    x=int(o.get("x", 0)), y=int(o.get("y", 0))) for o in d["objects"]]
        return cls(tuple(objs), int(d.get("image_size", DEFAULT_IMAGE_SIZE)))


def check_image_size(image_size: int) -> int:
    if not isinstance(image_size, int) or not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be an integer in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}] "
            f"(below {MIN_IMAGE_SIZE} the small shapes become ambiguous), got {image_size!r}")
    return image_size


def shape_pixels(image_size: int) -> dict[str, int]:
    """Side length in pixels of each size class."""
    return {"small": round(5 * image_size / 32), "large": round(8 * image_size / 32)}


def cell_bounds(image_size: int) -> list[tuple[int, int]]:
    """Usable [lo, hi) pixel range along one axis for each of the 3 grid cells.

    The last pixel of each cell stays empty so that neighbours never touch.
    """
    edges = [round(k * image_size / GRID) for k in range(GRID + 1)]
    return [(edges[k], edges[k + 1] - 1) for k in range(GRID)]


@lru_cache(maxsize=None)
def template(shape: str, s: int) -> np.ndarray:
    """Boolean (s, s) mask of a shape. Pixel-exact so small sizes stay distinct."""
    m = np.zeros((s, s), dtype=bool)
    c = (s - 1) / 2
    yy, xx = np.mgrid[0:s, 0:s]
    if shape == "square":
        m[:] = True
    elif shape == "circle":
        m = (xx - c) ** 2 + (yy - c) ** 2 <= (s / 2) ** 2 * 0.95
    elif shape == "diamond":
        for r in range(s):
            k = min(r, s - 1 - r)
            w = 2 * k + (1 if s % 2 else 2)          # 1,3,5,3,1 or 2,4,..,s,s,..,4,2
            lo = (s - w) // 2
            m[r, lo:lo + w] = True
    elif shape == "triangle":
        # Apex up, widths growing by 2 every 2 rows (1,1,3,3,5 at 5 px) so the slope stays
        # visible at the smallest size and the shape stays left-right symmetric.
        for r in range(s):
            w = max(r + 1 - ((r + 1 - s) % 2), 2 - s % 2)
            lo = (s - w) // 2
            m[r, lo:lo + w] = True
    elif shape == "cross":
        a = max(1, round(s / 3))
        if a % 2 != s % 2:
            a -= 1 if a > 1 else -1
        lo = (s - a) // 2
        m[lo:lo + a, :] = True
        m[:, lo:lo + a] = True
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
    return m.astype(bool)


def jitter_range(image_size: int, cell: int, size: str) -> tuple[range, range]:
    """Valid top-left (x, y) positions for an object of `size` in `cell`."""
    s = shape_pixels(image_size)[size]
    b = cell_bounds(image_size)
    (x0, x1), (y0, y1) = b[cell % GRID], b[cell // GRID]
    return range(x0, x1 - s + 1), range(y0, y1 - s + 1)


def place(rng: random.Random, image_size: int, cell: int, size: str) -> tuple[int, int]:
    xs, ys = jitter_range(image_size, cell, size)
    return rng.choice(xs), rng.choice(ys)


def recentre(image_size: int, obj: Obj, size: str) -> tuple[int, int]:
    """Position for `obj` resized to `size`: keep its centre, clamp into the cell."""
    s_old = shape_pixels(image_size)[obj.size]
    s_new = shape_pixels(image_size)[size]
    xs, ys = jitter_range(image_size, obj.cell, size)
    cx, cy = obj.x + s_old / 2, obj.y + s_old / 2
    x = min(max(int(round(cx - s_new / 2)), xs[0]), xs[-1])
    y = min(max(int(round(cy - s_new / 2)), ys[0]), ys[-1])
    return x, y


def sample_object(rng: random.Random, image_size: int, cell: int,
                  forbid: frozenset[tuple[str, str]] = frozenset()) -> Obj:
    while True:
        shape, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
        if (color, shape) not in forbid:
            break
    size = rng.choice(SIZES)
    x, y = place(rng, image_size, cell, size)
    return Obj(cell, shape, color, size, x, y)


def sample_scene(rng: random.Random, image_size: int = DEFAULT_IMAGE_SIZE,
                 n_objects: int | None = None,
                 forbid: frozenset[tuple[str, str]] = frozenset()) -> Scene:
    """A random scene; `forbid` lists (colour, shape) pairs that must not occur."""
    n = n_objects if n_objects is not None else rng.randint(1, MAX_OBJECTS)
    cells = rng.sample(range(GRID * GRID), n)
    return Scene(tuple(sample_object(rng, image_size, c, forbid) for c in cells), image_size)


def scene_from_seed(seed: int, image_size: int = DEFAULT_IMAGE_SIZE, **kw) -> Scene:
    return sample_scene(random.Random(seed), image_size, **kw)


def render(scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 image of a scene."""
    n = scene.image_size
    img = np.empty((n, n, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    px = shape_pixels(n)
    for o in scene.objects:
        s = px[o.size]
        img[o.y:o.y + s, o.x:o.x + s][template(o.shape, s)] = COLORS[o.color]
    return img

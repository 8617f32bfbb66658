"""One vocabulary and one sequence layout for every paradigm.

Einops legend: B batch, T sequence, N image codes per image (h * w), D model width.

Vocabulary: [text tokens | special tokens | image codes]. A conversation is a list of segments;
the loss covers only the assistant's part (answer text, or the generated image's codes) plus the
tokens that close it.

    understanding: <bos> <boi> [img] <eoi> <user> question <asst> answer <eos>
    generation:    <bos> <user> prompt <asst> <boi> [img] <eoi> <eos>
    editing:       <bos> <boi> [src] <eoi> <user> instruction <asst> <boi> [tgt] <eoi> <eos>

Positions are M-RoPE style triples (sequence, row, col): text tokens get (t, t, t); the image
code at grid cell (r, c) gets (t, r, c) with *absolute* row and column. Unlike Qwen2-VL's
(t0, t0 + r, t0 + c), two images in one sequence then share row/col coordinates, so the code at
the same cell of a source and an edited image is at zero relative rotation in the 2-D sections
(copying is a fixed attention pattern, whatever the instruction's length), and a generated code
knows which cell it is in. The first coordinate keeps the 1-D order. Each image span
has an id (`span`, 0 = not an image) so paradigms can make spans bidirectional.

Branches (training only): several question/answer turns may share one picture,

    <bos> <boi> [img] <eoi> | <user> q1 <asst> a1 <eos> | <user> q2 <asst> a2 <eos> | ...

where each turn after the fork is a branch (`branch` ids 1, 2, ...; 0 = the shared prefix)
that sees the prefix and itself only, at the positions it would have alone. Each branch is
then trained exactly as a one-question sequence is asked, while the picture is paid for once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

SPECIALS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<boi>", "<eoi>", "<user>", "<asst>", "<mask>")


@dataclass(frozen=True)
class Vocab:
    """Token ids. Ours: [text | SPECIALS | image codes]. A released checkpoint's vocabulary
    (runs/families) keeps its own ids: `ids` maps special roles ("bos", "eos", "pad", "boi",
    "eoi", "image" for an input-image placeholder, ...) to ids inside its text vocabulary, and
    its image codes start at `first_code` (Janus: after the text, read through the generation
    embeddings; Emu3: visual tokens at the end of one shared vocabulary). `row_end`: a token
    written after each row of an image's codes (Emu3's end of line), or None."""

    n_text: int
    n_codes: int
    grid: tuple[int, int]              # (h, w) codes per image
    ids: tuple[tuple[str, int], ...] | None = None
    first_code: int | None = None
    row_end: int | None = None

    def special(self, name: str) -> int:
        if self.ids is None:
            return self.n_text + SPECIALS.index(name)
        role = name.strip("<>")
        for r, i in self.ids:
            if r == role:
                return i
        raise ValueError(f"this vocabulary has no {name} token (it has: "
                         f"{', '.join(r for r, _ in self.ids)})")

    def has(self, name: str) -> bool:
        """Whether the vocabulary defines the special token `name` ("<boi>", "<image>")."""
        if self.ids is None:
            return name in SPECIALS
        return any(r == name.strip("<>") for r, _ in self.ids)

    @property
    def code_start(self) -> int:
        if self.first_code is not None:
            return self.first_code
        return self.n_text + len(SPECIALS)

    @property
    def size(self) -> int:
        return self.code_start + self.n_codes

    @property
    def n_image(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def image_len(self) -> int:
        """Sequence positions one image's codes take (with a row end after every row but the
        last, when the layout has one)."""
        return self.n_image + (self.grid[0] - 1 if self.row_end is not None else 0)

    @property
    def text_end(self) -> int:
        """Text + specials: the slice text decoding samples from."""
        return self.code_start

    def code_index(self, t0, k: int):
        """The sequence index of an image's k-th code whose first code sits at t0."""
        return t0 + k + (k // self.grid[1] if self.row_end is not None else 0)

    pad = property(lambda self: self.special("<pad>"))
    bos = property(lambda self: self.special("<bos>"))
    eos = property(lambda self: self.special("<eos>"))
    boi = property(lambda self: self.special("<boi>"))
    eoi = property(lambda self: self.special("<eoi>"))
    user = property(lambda self: self.special("<user>"))
    asst = property(lambda self: self.special("<asst>"))
    mask = property(lambda self: self.special("<mask>"))


@dataclass
class Packed:
    """One sequence before batching."""

    tokens: list[int]
    pos: list[tuple[int, int, int]]
    loss: list[bool]                  # token t is a training target (predicted from t-1)
    span: list[int]                   # image span id (1, 2, ...) or 0
    weight: list[float] = field(default_factory=list)   # loss weight per token; [] = all 1
    branch: list[int] = field(default_factory=list)     # branch id per token; [] = all 0

    def __len__(self) -> int:
        return len(self.tokens)


class Builder:
    """Appends text, specials and images to a sequence, tracking positions and loss."""

    def __init__(self, vocab: Vocab):
        self.v = vocab
        self.p = Packed([], [], [], [])
        self.n_spans = 0
        self.fork_at: int | None = None    # where branches start (see the module docstring)
        self.shift = 0                     # tokens of earlier branches, skipped by positions
        self.n_branch = 0

    def _t(self) -> int:
        return len(self.p.tokens) - self.shift

    def _add(self, tok: int, loss: bool, pos=None, span: int = 0, weight: float = 1.0):
        t = self._t()
        self.p.tokens.append(tok)
        self.p.pos.append(pos if pos is not None else (t, t, t))
        self.p.loss.append(loss)
        self.p.span.append(span)
        self.p.weight.append(weight)
        self.p.branch.append(self.n_branch)

    def branch(self) -> "Builder":
        """Start a new branch: what follows sees the tokens before the first branch and its
        own, and takes positions as if it came right after them."""
        if self.fork_at is None:
            self.fork_at = len(self.p.tokens)
        self.n_branch += 1
        self.shift = len(self.p.tokens) - self.fork_at
        return self

    def special(self, name: str, loss: bool = False, weight: float = 1.0) -> "Builder":
        self._add(self.v.special(name), loss, weight=weight)
        return self

    def text(self, ids: list[int], loss: bool = False, weight: float = 1.0) -> "Builder":
        for i in ids:
            self._add(int(i), loss, weight=weight)
        return self

    def image(self, codes, loss: bool = False) -> "Builder":
        """<boi> codes <eoi>; codes is a flat sequence of N ints in raster order."""
        h, w = self.v.grid
        codes = [int(c) for c in codes]
        if len(codes) != h * w:
            raise ValueError(f"an image holds {h * w} codes, got {len(codes)}")
        self.special("<boi>", loss)
        self.n_spans += 1
        t0 = self._t()
        for k, c in enumerate(codes):
            r, col = divmod(k, w)
            self._add(self.v.code_start + c, loss, (t0 + k, r, col), self.n_spans)
        self.special("<eoi>", loss)
        return self

    def span(self, ids: list[int], loss: bool = False) -> list[int]:
        """A bidirectional span of plain tokens with its own span id and text positions (a
        masked-diffusion response, mmada.py). Returns the indices of its tokens."""
        self.n_spans += 1
        start = len(self.p.tokens)
        for i in ids:
            self._add(int(i), loss, span=self.n_spans)
        return list(range(start, len(self.p.tokens)))

    def build(self) -> Packed:
        return self.p


def image_positions(t0, k: int, grid: tuple[int, int]):
    """Position triple of the k-th code of an image whose first code sits at index t0 (an int
    or a (B,) tensor): (t0 + k, row, col); one step of model.rotary.positions_image."""
    r, c = divmod(k, grid[1])
    if isinstance(t0, torch.Tensor):
        return torch.stack([t0 + k, torch.full_like(t0, r), torch.full_like(t0, c)], dim=-1)
    return (t0 + k, r, c)


# Paradigm extras laid out (B, T, ...) like the tokens (the masked paradigm's labels); every
# other extra is one entry per row (B, ...).
PER_TOKEN_EXTRAS = frozenset({"labels"})


@dataclass
class Batch:
    tokens: torch.Tensor        # (B, T) long
    pos: torch.Tensor           # (B, T, 3) long
    loss: torch.Tensor          # (B, T) bool: target positions
    span: torch.Tensor          # (B, T) long: image span ids, 0 for text/special/pad
    valid: torch.Tensor         # (B, T) bool: not padding
    tasks: list[str]
    extra: dict = field(default_factory=dict)   # a paradigm's own inputs (Paradigm.extras_for)
    weight: torch.Tensor | None = None          # (B, T) float loss weight per token
    branch: torch.Tensor | None = None          # (B, T) long branch ids; None = no branches

    def to(self, device) -> "Batch":
        return Batch(self.tokens.to(device), self.pos.to(device), self.loss.to(device),
                     self.span.to(device), self.valid.to(device), self.tasks,
                     {k: v.to(device) for k, v in self.extra.items()},
                     None if self.weight is None else self.weight.to(device),
                     None if self.branch is None else self.branch.to(device))

    def rows(self, idx: list[int]) -> "Batch":
        """The batch of rows `idx` of a right-padded batch, trimmed to its own longest row."""
        n = int(self.valid[idx].sum(1).max())
        sel = torch.as_tensor(idx, dtype=torch.long, device=self.tokens.device)

        def cut(x):
            return None if x is None else x[sel, :n]
        extra = {}
        for k, v in self.extra.items():
            if not (torch.is_tensor(v) and v.shape[:1] == self.tokens.shape[:1]):
                raise ValueError(f"extra input {k!r} is not one row per sequence; cannot split")
            extra[k] = v[sel.to(v.device), :n] if k in PER_TOKEN_EXTRAS else v[sel.to(v.device)]
        branch = cut(self.branch)
        return Batch(cut(self.tokens), cut(self.pos), cut(self.loss), cut(self.span),
                     cut(self.valid), [self.tasks[i] for i in idx], extra, cut(self.weight),
                     branch if branch is not None and bool(branch.any()) else None)


def split_by_length(lengths: list[int], groups: int) -> list[list[int]]:
    """Rows grouped (at most `groups` groups, each of rows of similar length) so that padding
    every group to its own longest row costs the fewest token slots: the best cut of the rows
    sorted by length, by dynamic programming (B <= a few hundred)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    ln = [lengths[i] for i in order]
    B, inf = len(ln), float("inf")
    # best[g][j]: least padded area of the first j sorted rows in g groups; cut[g][j]: last start
    best = [[inf] * (B + 1) for _ in range(groups + 1)]
    cut = [[0] * (B + 1) for _ in range(groups + 1)]
    best[0][0] = 0
    for g in range(1, groups + 1):
        for j in range(1, B + 1):
            for i in range(g - 1, j):
                c = best[g - 1][i] + (j - i) * ln[j - 1]
                if c < best[g][j]:
                    best[g][j], cut[g][j] = c, i
    g = min(range(1, groups + 1), key=lambda k: (best[k][B], k))
    out, j = [], B
    while g > 0:
        i = cut[g][j]
        out.append(order[i:j])
        j, g = i, g - 1
    return [grp for grp in reversed(out) if grp]


def collate(seqs: list[Packed], pad: int, tasks: list[str] | None = None,
            left: bool = False) -> Batch:
    """Pad to the longest sequence (right padding for training, left for generation)."""
    T = max(len(s) for s in seqs)
    B = len(seqs)
    tokens = torch.full((B, T), pad, dtype=torch.long)
    pos = torch.zeros((B, T, 3), dtype=torch.long)
    loss = torch.zeros((B, T), dtype=torch.bool)
    span = torch.zeros((B, T), dtype=torch.long)
    valid = torch.zeros((B, T), dtype=torch.bool)
    weight = torch.ones((B, T))
    branch = torch.zeros((B, T), dtype=torch.long)
    for b, s in enumerate(seqs):
        n = len(s)
        sl = slice(T - n, T) if left else slice(0, n)
        tokens[b, sl] = torch.tensor(s.tokens)
        pos[b, sl] = torch.tensor(s.pos)
        loss[b, sl] = torch.tensor(s.loss)
        span[b, sl] = torch.tensor(s.span)
        valid[b, sl] = True
        if s.weight:
            weight[b, sl] = torch.tensor(s.weight)
        if any(s.branch):
            branch[b, sl] = torch.tensor(s.branch)
    return Batch(tokens, pos, loss, span, valid, tasks or [""] * B, weight=weight,
                 branch=branch if bool(branch.any()) else None)

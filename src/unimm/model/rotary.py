"""Multi-axis rotary position embedding (M-RoPE, Qwen2-VL arXiv:2409.12191 sec. 2.1).

Every token carries three integer coordinates `pos[b, t] = (seq, row, col)`. The `p = e/2`
rotary frequency pairs of a head are split between the three axes (`sections`, pairs per axis);
each pair is rotated by the coordinate of its axis. Because all pairs use the ordinary RoPE
frequency ladder theta^(-2i/e), a token with pos (t, t, t) gets exactly 1-D RoPE (RoFormer,
arXiv:2104.09864), so text-only sequences are a plain RoPE transformer.

Position convention (the caller's choice; these helpers implement the Qwen2-VL one):
- text token at sequence index t: (t, t, t)                          -> `positions_1d`
- image of h x w tokens starting at sequence index t0: (t0, t0 + r, t0 + c) for cell (r, c),
  and the text after the image resumes at t0 + max(h, w)             -> `positions_image`
Only differences of positions matter (attention between two tokens depends on pos_i - pos_j
per axis), so shifting all positions by a constant changes nothing.

Notable choices:
- Layout "interleaved" (default, as Qwen3-VL): the row/col axes take every third pair
  (1, 4, 7, ... and 2, 5, 8, ...), so every axis gets high and low frequencies. "contiguous"
  (Qwen2-VL) gives the seq axis the first `sections[0]` pairs (highest frequencies) and the
  image axes the lowest ones, which barely rotate over a 16-32 wide grid at small head dims.
- cos/sin tables are precomputed in float32 up to `max_seq_len` (non-persistent buffers) and
  gathered by position; rotation runs in float32 and casts back (bf16 angles lose precision).
- Rotation is the "rotate half" form: pair i is (x[i], x[i + p]).

Letters: b batch, h heads, t tokens, e head dim, p = e/2 rotary pairs, n positions in the table.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def default_sections(head_dim: int) -> tuple[int, int, int]:
    """Pairs per axis: half to seq, a quarter each to row/col (head_dim 32 -> (8, 4, 4))."""
    pairs = head_dim // 2
    quarter = pairs // 4
    return (pairs - 2 * quarter, quarter, quarter)


def axis_of_pairs(sections: tuple[int, int, int], layout: str) -> Tensor:
    """Long (p,): which coordinate (0 seq, 1 row, 2 col) rotates each frequency pair."""
    seq, row, col = sections
    pairs = seq + row + col
    if layout == "contiguous":
        return torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    axis = torch.zeros(pairs, dtype=torch.long)
    # Qwen3-VL interleaving: pair 3k+1 -> row, 3k+2 -> col while that axis has pairs left.
    axis[1:3 * row:3] = 1
    axis[2:3 * col:3] = 2
    # if row and col differ in size, the round-robin above can fall short; top up from the end
    for a, want in ((1, row), (2, col)):
        free = (axis == 0).nonzero().flatten().flip(0)
        missing = want - int((axis == a).sum())
        axis[free[:missing]] = a
    return axis


class Rotary(nn.Module):
    """Maps positions (b, t, 3) to the (cos, sin) pair consumed by `apply_rotary`."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float,
                 sections: tuple[int, int, int], layout: str = "interleaved"):
        super().__init__()
        self.head_dim, self.max_seq_len, self.theta = head_dim, max_seq_len, theta
        self.register_buffer("axis", axis_of_pairs(sections, layout), persistent=False)  # (p,)
        self.register_buffer("pair", torch.arange(head_dim // 2), persistent=False)  # (p,)
        cos, sin = self._tables(torch.device("cpu"))
        self.register_buffer("cos", cos, persistent=False)  # (n, p)
        self.register_buffer("sin", sin, persistent=False)  # (n, p)

    def _tables(self, device) -> tuple[Tensor, Tensor]:
        inv_freq = self.theta ** (-torch.arange(0, self.head_dim, 2, device=device,
                                                dtype=torch.float64) / self.head_dim)
        n = torch.arange(self.max_seq_len, device=device, dtype=torch.float64)
        angles = torch.outer(n, inv_freq)  # (n, p)
        return angles.cos().float(), angles.sin().float()

    def check(self, pos: Tensor) -> None:
        """A clear error for positions outside the tables, on a CPU (on accelerators,
        indexing asserts on the device instead; a compiled graph skips the check: reading the
        values would break the graph in two)."""
        if pos.device.type == "cpu" and not torch.compiler.is_compiling():
            lo, hi = int(pos.min()), int(pos.max())
            if lo < 0 or hi >= self.max_seq_len:
                raise ValueError(f"positions must lie in [0, max_seq_len={self.max_seq_len}), "
                                 f"got [{lo}, {hi}]")

    def forward(self, pos: Tensor) -> tuple[Tensor, Tensor]:
        """pos: Long (b, t, 3) -> cos, sin: float32 (b, 1, t, p)."""
        if self.cos.dtype != torch.float32:  # `model.to(bf16)` cast the tables: rebuild them
            self.cos, self.sin = self._tables(self.cos.device)
        self.check(pos)
        coord = pos[..., self.axis]  # (b, t, p): the coordinate that rotates each pair
        cos = self.cos[coord, self.pair]  # (b, t, p)
        sin = self.sin[coord, self.pair]
        return cos.unsqueeze(1), sin.unsqueeze(1)  # (b, 1, t, p)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: (b, h, t, e); cos, sin: (b, 1, t, e/2) -> rotated x, same dtype."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (b, h, t, p) each (float() is free for float32)
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out if out.dtype == x.dtype else out.type_as(x)


def positions_1d(batch: int, length: int, offset: int | Tensor = 0,
                 device: torch.device | str | None = None) -> Tensor:
    """Long (b, t, 3) text positions (i, i, i) for i = offset .. offset + length - 1.

    `offset` is an int or a Long (b,) tensor (per-row starts, e.g. after left padding)."""
    t = torch.arange(length, device=device)
    if isinstance(offset, Tensor):
        t = offset.to(device=t.device).view(-1, 1) + t  # (b, t)
    else:
        t = t + offset
    return t.expand(batch, length).unsqueeze(-1).expand(batch, length, 3).contiguous()


def positions_image(batch: int, h: int, w: int, start: int = 0,
                    device: torch.device | str | None = None) -> Tensor:
    """Long (b, h*w, 3) positions (start + k, r, c) of a row-major h x w image whose first code
    sits at sequence index `start`: the sequence coordinate keeps the 1-D order and row / col are
    absolute, so two images share 2-D coordinates (the convention of paradigms/sequence.py)."""
    k = torch.arange(h * w, device=device)
    pos = torch.stack((start + k, k // w, k % w), dim=-1)  # (h*w, 3)
    return pos.expand(batch, h * w, 3).contiguous()

"""Masked image modelling with parallel decoding (Show-o / MaskGIT) on the shared backbone.

Text stays autoregressive (causal, next-token loss on answers). Image codes live in the same
vocabulary as in the AR paradigm, but inside an image span attention is bidirectional, the
generated image is trained by masking a scheduled fraction of its codes with `<mask>` and
predicting them *at their own positions*, and sampling fills the span in a few parallel steps,
keeping the most confident predictions each step (MaskGIT, arXiv:2202.04200; Show-o,
arXiv:2408.12528).

Notable choices:
- Labels are aligned to hidden states: `labels[b, i]` is what the hidden state at i must
  predict (the next token for text targets, the original code for a masked code), so one
  cross-entropy covers both objectives. With `shift`, a masked code is predicted from the
  position before it instead, as every token is in the AR paradigm (`label_index`).
- Mask ratio r = cos(pi/2 * u), u ~ U(0, 1) (MaskGIT's cosine schedule), at least one code
  masked; the same cosine schedule decides how many codes are still masked after each sampling
  step, so training and sampling see the same ratios. Every position is revealed exactly once
  (`reveal_counts`).
- Sampling computes the prompt once into the KV cache; each step rewrites only the N image
  slots at the same `start` (their keys/values change, the prompt's never do), with
  conditional and unconditional rows in one forward for classifier-free guidance.
- Confidence is the log-probability of the sampled code; optional Gumbel noise on it, annealed
  to 0 over the steps (MaskGIT's "choice temperature"), spreads the revealed positions.
- Input images (understanding, the source of an edit) are bidirectional too, also at answer
  time (`prefix_attention`), exactly as in training.

Einops legend: B images, R rows (2B with guidance), T prefix, N codes per image, K codebook
size, D width.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.unified import TokenModel
from ..utils.config import check_limits
from .base import (
    Paradigm,
    Turn,
    drop_condition,
    format_turn,
    reduce_loss,
    text_image_stats,
)
from .sampling import SamplingConfig, guide, sample
from .sequence import Batch, Packed, Vocab, collate, image_positions

IGNORE = -100


@dataclass(frozen=True)
class MaskedConfig:
    cfg_dropout: float = 0.1          # probability of dropping the text condition of t2i / edit
    steps: int = 12                   # parallel decoding steps per image
    confidence_noise: float = 0.0     # Gumbel noise scale on confidences at step 0 (anneals to 0)
    # Sampling only: a step reveals at most one code within this Chebyshev distance on the code
    # grid of another code it reveals (while such codes remain; 0 = off), so neighbouring codes
    # (parts of one object) are decided one after another, each seeing the other.
    spread: int = 0
    loss_reduction: Literal["token", "sequence"] = "sequence"   # see ARConfig
    # Where a masked code is predicted: False = at its own position (MaskGIT / Show-o); True =
    # from the position before it, the autoregressive alignment (DiffuLLaMA / Dream adapt a
    # pre-trained AR model to masked diffusion this way, arXiv:2410.17891), so a warm start
    # from an `ar` run keeps what its head has learned; the first code is then predicted from
    # <boi>, which sees the prompt only.
    shift: bool = False

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (1, 10000), "spread": (0, 4096)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.confidence_noise < 0:
            raise ValueError(f"confidence_noise must be >= 0, got {self.confidence_noise}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0, got {self.spread}")
        if self.loss_reduction not in ("token", "sequence"):
            raise ValueError(f"loss_reduction must be 'token' or 'sequence', "
                             f"got {self.loss_reduction!r}")


def masked_fraction(progress: float) -> float:
    """Cosine schedule: the fraction of codes still masked at progress in [0, 1]."""
    return math.cos(math.pi / 2 * progress)


def reveal_counts(n: int, steps: int) -> list[int]:
    """How many codes each of `steps` steps reveals: follows the cosine schedule, each step
    reveals at least one while codes remain, and the counts sum to n."""
    out, masked = [], n
    for s in range(steps):
        after = 0 if s == steps - 1 else math.floor(n * masked_fraction((s + 1) / steps))
        after = max(0, min(after, masked - 1))
        out.append(masked - after)
        masked = after
    return out


def reveal(logits: Tensor, masked: Tensor, k: int, sampling: SamplingConfig,
           noise: float = 0.0, generator=None, grid: tuple[int, int] | None = None,
           spread: int = 0) -> tuple[Tensor, Tensor]:
    """One parallel decoding step. logits (B, N, K), masked (B, N) bool. Samples a candidate at
    every position, then reveals the k most confident still-masked positions per row (with
    `spread` > 0 and the (h, w) code `grid`: spread apart, see `spread_topk`).
    Returns (candidates (B, N), newly revealed (B, N) bool)."""
    B, N, K = logits.shape
    cand = sample(logits.reshape(B * N, K), sampling, generator).view(B, N)
    conf = logits.float().log_softmax(-1).gather(-1, cand[..., None])[..., 0]      # (B, N)
    if noise > 0:
        u = torch.rand(conf.shape, generator=generator, device=conf.device)
        conf = conf + noise * -torch.log(-torch.log(u.clamp(1e-9, 1 - 1e-9)))
    conf = conf.masked_fill(~masked, float("-inf"))
    k = min(k, int(masked.sum(1).min()))
    if spread and grid is not None and k > 1:
        idx = spread_topk(conf, k, grid, spread)                                     # (B, k)
    else:
        idx = conf.topk(k, dim=1).indices                                            # (B, k)
    new = torch.zeros_like(masked).scatter_(1, idx, True) & masked
    return cand, new


def spread_topk(conf: Tensor, k: int, grid: tuple[int, int], radius: int) -> Tensor:
    """Greedy top-k of conf (B, N) (-inf = not a candidate) over an (h, w) raster grid that
    skips candidates within Chebyshev distance `radius` of one already picked in this call,
    until none but such are left (then plain confidence order) -> indices (B, k)."""
    B, N = conf.shape
    h, w = grid
    cell = torch.arange(N, device=conf.device)
    r, c = cell // w, cell % w
    near = ((r[:, None] - r).abs() <= radius) & ((c[:, None] - c).abs() <= radius)   # (N, N)
    rows = torch.arange(B, device=conf.device)
    left = conf.clone()
    blocked = torch.zeros(B, N, dtype=torch.bool, device=conf.device)
    picks = []
    for _ in range(k):
        score = left.masked_fill(blocked, float("-inf"))
        score = torch.where(torch.isneginf(score).all(1, keepdim=True), left, score)
        j = score.argmax(1)                                                          # (B,)
        picks.append(j)
        left[rows, j] = float("-inf")
        blocked |= near[j]
    return torch.stack(picks, 1)


class Masked(Paradigm):
    name = "masked"
    bidirectional_images = True

    def __init__(self, vocab: Vocab, cfg: MaskedConfig | None = None):
        super().__init__(vocab)
        self.cfg = cfg or MaskedConfig()

    # ---- training -----------------------------------------------------------------------------
    def format_labeled(self, turn: Turn, rng: random.Random) -> tuple[Packed, list[int]]:
        """The turn's sequence with its target image partly masked, and labels aligned to
        hidden states (IGNORE where nothing is predicted)."""
        v = self.vocab
        if turn.task in ("t2i", "edit") and rng.random() < self.cfg.cfg_dropout:
            turn = drop_condition(turn)
        p = format_turn(v, turn)
        labels = [IGNORE] * len(p)
        if turn.task in ("caption", "vqa"):
            for t in range(1, len(p)):
                if p.loss[t]:
                    labels[t - 1] = p.tokens[t]
        else:
            code_idx = [t for t in range(len(p)) if p.loss[t] and p.tokens[t] >= v.code_start]
            n = len(code_idx)
            k = max(1, math.ceil(n * masked_fraction(rng.random())))
            for t in rng.sample(code_idx, k):
                labels[self.label_index(t)] = p.tokens[t]
                p.tokens[t] = v.mask
        p.loss = [lab != IGNORE for lab in labels]
        return p, labels

    def label_index(self, t: int) -> int:
        """Where the prediction of a masked token at index t is read (see `shift`)."""
        return t - 1 if self.cfg.shift else t

    def span_logits(self, model: TokenModel, h_before: Tensor, h: Tensor, lo: int,
                    hi: int) -> Tensor:
        """Logits (R, L, hi - lo) for the L slots of a span from their hidden states h
        (R, L, D) and the hidden state just before the span h_before (R, D) (`shift`)."""
        if self.cfg.shift:
            h = torch.cat([h_before[:, None], h[:, :-1]], dim=1)
        return model.logits(h, lo, hi).float()

    def make_batch(self, turns: list[Turn], rng: random.Random) -> Batch:
        seqs, labels = zip(*(self.format_labeled(t, rng) for t in turns))
        batch = collate(list(seqs), self.vocab.pad, [t.task for t in turns])
        lab = torch.full(batch.tokens.shape, IGNORE, dtype=torch.long)
        for b, x in enumerate(labels):
            lab[b, :len(x)] = torch.tensor(x)
        batch.extra = {**self.extras_for(turns), "labels": lab}
        return batch

    def loss(self, model: TokenModel, batch: Batch, generator=None):
        extra = {k: x for k, x in batch.extra.items() if k != "labels"}
        h = self.hidden(model, batch.tokens, batch.pos, self.training_mask(batch),
                        extra)                                              # (B, T, D)
        labels = batch.extra["labels"]
        where = labels != IGNORE
        tgt = labels[where]                                                 # (M,)
        ce = F.cross_entropy(model.logits(h[where]).float(), tgt, reduction="none")
        stats = text_image_stats(ce, tgt >= self.vocab.code_start)
        w = self.target_weights(batch, labels, where)
        return reduce_loss(ce, where, self.cfg.loss_reduction, w), stats

    def target_weights(self, batch: Batch, labels: Tensor, where: Tensor) -> Tensor | None:
        """Per-target loss weights (M,) or None (all equal)."""
        return None

    # ---- sampling -----------------------------------------------------------------------------
    def function_evaluations(self) -> int:
        """Backbone forwards per image (guidance rows share a forward)."""
        return self.cfg.steps

    @torch.no_grad()
    def generate_images(self, model: TokenModel, turns: list[Turn], guidance: float = 1.0,
                        sampling: SamplingConfig = SamplingConfig(), generator=None,
                        steps: int | None = None) -> Tensor:
        """Sample one image per turn in `steps` parallel steps -> (B, N) codes in [0, K)."""
        v = self.vocab
        steps = steps or self.cfg.steps
        use_cfg = guidance != 1.0
        src = turns + [drop_condition(t) for t in turns] if use_cfg else turns
        dev = next(model.parameters()).device
        batch = collate([format_turn(v, t, with_target=False) for t in src], v.pad,
                        left=True).to(dev)                                   # ends with <boi>
        R, T = batch.tokens.shape
        B, N = len(turns), v.n_image
        cache = model.new_cache(R, T + N, device=dev, reuse=True)
        extra = {k: x.to(dev) for k, x in self.extras_for(src).items()}
        h_boi = self.hidden(model, batch.tokens, batch.pos, self.prefix_attention(batch),
                            extra, cache=cache, last=True)[:, -1]  # prompt, once
        t0 = batch.valid.sum(1)                                             # (R,) code 0 index
        pos = torch.stack([image_positions(t0, k, v.grid) for k in range(N)], dim=1)  # (R, N, 3)
        keys = torch.cat([batch.valid, torch.ones(R, N, dtype=torch.bool, device=dev)], 1)
        att = keys[:, None, None, :].expand(R, 1, N, T + N)
        lo, hi = v.code_start, v.code_start + v.n_codes
        codes = torch.zeros(B, N, dtype=torch.long, device=dev)
        masked = torch.ones(B, N, dtype=torch.bool, device=dev)
        for s, k in enumerate(reveal_counts(N, steps)):
            tok = torch.where(masked, v.mask, codes + lo).repeat(R // B, 1)  # (R, N)
            h = self.hidden(model, tok, pos, att, {}, cache=cache, start=T)  # (R, N, D)
            logits = self.span_logits(model, h_boi, h, lo, hi)               # (R, N, K)
            if use_cfg:
                logits = guide(logits, guidance)                             # (B, N, K)
            noise = self.cfg.confidence_noise * (1 - s / steps)
            cand, new = reveal(logits, masked, k, sampling, noise, generator, v.grid,
                               self.cfg.spread)
            codes = torch.where(new, cand, codes)
            masked = masked & ~new
        return codes

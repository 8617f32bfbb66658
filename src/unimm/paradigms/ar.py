"""Autoregressive over everything (Chameleon / Emu3 / Janus-style generation head).

Image positions are VQ codes in the shared vocabulary; the image span is causal; the loss is
next-token cross-entropy on the assistant's tokens only; images are sampled code by code.

Notable choices:
- Condition dropout (`cfg_dropout`) removes the prompt/instruction for classifier-free
  guidance (`uncond = "drop"`), or keeps its length and writes <pad> over every prompt token but
  <bos> and the image delimiters (`uncond = "pad"`, as Janus trains and transformers' Janus
  samples; the pads are attended).
- Input images (the picture a question is about, the source of an edit) may be read
  bidirectionally (`input_images = "bidirectional"`, a prefix-LM over the image span as in
  Show-o / Transfusion for their image spans): they are given, never sampled, so every code of
  an object can see the whole object instead of only the codes before it in raster order. The
  generated image's span stays causal. Default "causal" (Chameleon / Janus; needed for the
  Janus layout).
- Sampling runs conditional and unconditional rows in one batched forward (2B rows), with a
  preallocated KV cache, and computes logits only over the code slice: an image span holds
  exactly N codes and nothing else (constrained decoding by construction).

Einops legend: B images, R rows (2B with guidance), T prefix, N codes, K codebook size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.unified import TokenModel
from .base import (Paradigm, Turn, drop_condition, reduce_loss,
                   text_image_stats)
from .sampling import SamplingConfig, guide, sample
from .sequence import Batch, Packed, Vocab, collate, image_positions


@dataclass(frozen=True)
class ARConfig:
    cfg_dropout: float = 0.1        # probability of dropping the text condition of t2i / edit
    # How target tokens are averaged: "token" (every target token weighs the same: a 64-code
    # image then outweighs a one-word answer 64:1) or "sequence" (each example weighs the
    # same, so the task mixture sets the balance between understanding and generation).
    loss_reduction: Literal["token", "sequence"] = "token"
    # The unconditional row of guidance: "drop" the condition, or "pad" it (Janus layout).
    uncond: Literal["drop", "pad"] = "drop"
    # Attention inside *input* image spans: "causal" or "bidirectional" (see module docstring).
    input_images: Literal["causal", "bidirectional"] = "causal"

    def __post_init__(self):
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if self.uncond not in ("drop", "pad"):
            raise ValueError(f"uncond must be 'drop' or 'pad', got {self.uncond!r}")
        if self.input_images not in ("causal", "bidirectional"):
            raise ValueError(f"input_images must be 'causal' or 'bidirectional', "
                             f"got {self.input_images!r}")


def pad_condition(v: Vocab, p: Packed) -> Packed:
    """Janus's unconditional row: every non-target token except <bos>, <boi>, <eoi> and image
    codes becomes <pad> (same length and positions, still attended)."""
    keep = (v.bos, v.boi, v.eoi)
    tokens = [t if loss or t in keep or t >= v.code_start else v.pad
              for t, loss in zip(p.tokens, p.loss)]
    return Packed(tokens, p.pos, p.loss, p.span, p.weight, p.branch)


class Autoregressive(Paradigm):
    name = "ar"

    def __init__(self, vocab: Vocab, cfg: ARConfig | None = None):
        super().__init__(vocab)
        self.cfg = cfg or ARConfig()
        # prompts (sampling) hold input images only, so the base class's span-bidirectional
        # prefix mask is exactly right; training masks target spans out of `span` (loss)
        self.bidirectional_images = self.cfg.input_images == "bidirectional"

    def format(self, turn: Turn, rng: random.Random) -> Packed:
        if turn.task in ("t2i", "edit") and rng.random() < self.cfg.cfg_dropout:
            return self.unconditional(turn, with_target=True)
        return self.layout(self.vocab, turn)

    def unconditional(self, turn: Turn, with_target: bool = False) -> Packed:
        """The guidance twin of a generation turn (config `uncond`)."""
        own = self.layout.uncond(self.vocab, turn, with_target)
        if own is not None:
            return own
        if self.cfg.uncond == "pad":
            return pad_condition(self.vocab, self.layout(self.vocab, turn, with_target))
        return self.layout(self.vocab, drop_condition(turn), with_target)

    def training_mask(self, batch: Batch) -> Tensor | None:
        """None (plain causal) or (B, 1, T, T): causal, plus each *input* image span (no loss
        on its codes) open in both directions with bidirectional input images, and branches
        kept apart (sequence.py) when the batch has any."""
        if not self.bidirectional_images and batch.branch is None:
            return None
        return self.attention(batch.span.masked_fill(batch.loss, 0), batch.valid, batch.branch)

    def loss(self, model: TokenModel, batch: Batch, generator=None):
        h = self.hidden(model, batch.tokens, batch.pos, self.training_mask(batch),
                        batch.extra)                                 # (B, T, D)
        tgt_mask = batch.loss[:, 1:]                                 # token t+1 is a target
        hs = h[:, :-1][tgt_mask]                                     # (M, D) only where needed
        tgt = batch.tokens[:, 1:][tgt_mask]                          # (M,)
        logits = model.logits(hs).float()
        ce = F.cross_entropy(logits, tgt, reduction="none")
        stats = text_image_stats(ce, tgt >= self.vocab.code_start)
        w = None if batch.weight is None else batch.weight[:, 1:][tgt_mask]
        return reduce_loss(ce, tgt_mask, self.cfg.loss_reduction, w), stats

    def loss_share(self, batch: Batch) -> float:
        if self.cfg.loss_reduction == "sequence":
            return super().loss_share(batch)
        tgt = batch.loss[:, 1:]
        return float(tgt.sum() if batch.weight is None else batch.weight[:, 1:][tgt].sum())

    def shared_guidance_prefix(self, rows: list[Packed]) -> int | None:
        """The index of the longest of these unconditional rows if every one of them, less its
        last token, is a prefix (tokens and positions) of that row, under a causal mask; else
        None. So it is with Janus's padded rows (<bos>, <pad> x prompt length, <boi>) and with
        dropped conditions: their keys and values can be computed once (`_fill_guided`)."""
        lead = max(range(len(rows)), key=lambda i: len(rows[i]))
        top = rows[lead]
        for r in rows:
            n = len(r) - 1
            if r.tokens[:n] != top.tokens[:n] or list(r.pos[:n]) != list(top.pos[:n]):
                return None
            if self.bidirectional_images and any(r.span):
                return None
        return lead

    def _fill_guided(self, model: TokenModel, batch: Batch, mask: Tensor, lead: int,
                     cache) -> Tensor:
        """The prompt fill of a guided batch (B conditional rows, then B unconditional ones)
        whose unconditional rows share a prefix (`shared_guidance_prefix`; `lead` is the row
        of the longest, counted in the whole batch): the conditional rows as usual; the shared
        prefix once, in the lead row; copied into the other unconditional rows' slots (left
        padding puts it at a different offset in each); then the unconditional rows' last
        tokens together. Janus-size guided batch of 16: the unconditional half of the fill
        shrinks from 16 padded rows to one row plus 16 tokens. Returns the last hidden states
        (R, D), as the plain fill does (equal up to float rounding; tests compare)."""
        tokens, pos = batch.tokens, batch.pos
        R, T = tokens.shape
        B = R // 2
        n = batch.valid.sum(1).tolist()
        hc = self.hidden(model, tokens[:B], pos[:B], mask[:B], {}, cache=cache.rows(0, B),
                         last=True)[:, -1]               # (views: writes land in `cache`)
        j = lead
        a = T - n[j]                                     # the lead row's first real slot
        lead_rows = cache.rows(j, j + 1)
        lead_rows.length = a                             # its left padding: never attended
        self.hidden(model, tokens[j:j + 1, a:T - 1], pos[j:j + 1, a:T - 1],
                    mask[j:j + 1, :, a:T - 1, :T - 1], {}, cache=lead_rows, start=a, last=True)
        for i in range(B, R):                            # row i's prefix: n[i] - 1 slots
            if i != j:
                cache.copy_slots(j, a, i, T - n[i], n[i] - 1)
        uncond = cache.rows(B, R)
        uncond.length = T - 1
        hu = self.hidden(model, tokens[B:, T - 1:], pos[B:, T - 1:], mask[B:, :, T - 1:],
                         {}, cache=uncond, start=T - 1, last=True)[:, -1]
        cache.length = T
        return torch.cat([hc, hu])

    @torch.no_grad()
    def generate_images(self, model: TokenModel, turns: list[Turn], guidance: float = 1.0,
                        sampling: SamplingConfig = SamplingConfig(), generator=None) -> Tensor:
        """Sample one image per turn -> (B, N) codes in [0, K). With a row-end token in the
        vocabulary (Emu3's end of line), it is fed after every row but the last, as the
        checkpoint's grid constraint requires (its logits are not sampled)."""
        v = self.vocab
        use_cfg = guidance != 1.0
        rows = [self.layout(v, t, with_target=False) for t in turns]
        if use_cfg:
            rows += [self.unconditional(t) for t in turns]
        dev = next(model.parameters()).device
        batch = collate(rows, v.pad, left=True).to(dev)
        tokens, pos, valid = batch.tokens, batch.pos, batch.valid
        R, T = tokens.shape
        B, N = len(turns), v.n_image
        cache = model.new_cache(R, T + v.image_len, device=dev, reuse=True)
        src = turns + [drop_condition(t) for t in turns] if use_cfg else turns
        extra = {k: x.to(dev) for k, x in self.extras_for(src).items()}
        mask = self.prefix_attention(batch)
        lead = self.shared_guidance_prefix(rows[B:]) if use_cfg and B > 1 and not extra else None
        if lead is None:
            h = self.hidden(model, tokens, pos, mask, extra, cache=cache, last=True)[:, -1]
        else:
            h = self._fill_guided(model, batch, mask, B + lead, cache)        # (R, D)
        t0 = valid.sum(1)                                      # sequence index of code 0, per row
        where = torch.stack([image_positions(t0, k, v.grid) for k in range(N)], 1)  # (R, N, 3)
        if v.row_end is not None:                              # rows end with a token
            where[..., 0] += torch.arange(N, device=dev) // v.grid[1]
        slots = model.decode_slots(valid, cache)
        codes = torch.empty(B, N, dtype=torch.long, device=dev)
        lo, hi = v.code_start, v.code_start + v.n_codes
        logits = model.logits(h, lo, hi).float()               # (R, K)
        step = T                                               # the next cache slot
        for k in range(N):
            if use_cfg:
                logits = guide(logits, guidance)               # (B, K)
            code = sample(logits, sampling, generator)         # (B,)
            codes[:, k] = code
            if k == N - 1:
                break
            tok = (code + lo).repeat(R // B)[:, None]          # (R, 1) same code in both halves
            logits = model.decode_logits(tok, where[:, k:k + 1], slots, cache, step, lo, hi)
            step += 1
            if v.row_end is not None and (k + 1) % v.grid[1] == 0:
                end = torch.full_like(tok, v.row_end)
                p = (where[:, k:k + 1, :1] + 1).expand(R, 1, 3)      # text-like (t, t, t)
                logits = model.decode_logits(end, p, slots, cache, step, lo, hi)
                step += 1
        return codes

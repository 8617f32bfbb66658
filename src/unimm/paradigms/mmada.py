"""Discrete diffusion over text and images (MMaDA / LLaDA style) on the shared backbone.

Every answer is a masked-diffusion sample: the response (answer text, or the generated image's
codes) is a bidirectional span that starts fully masked and is filled by iterative unmasking.
Images are decoded exactly as in the masked paradigm (MaskGIT cosine schedule, confidence
order, batched CFG, prompt cached once); text answers are decoded block by block
(semi-autoregressive, LLaDA sec. 2.4 / MMaDA): a fixed-length response of `text_len` slots,
blocks of `block` tokens revealed left to right, `steps_per_block` parallel steps per block.

Notable choices:
- Training masks each response token independently with probability t ~ U(0, 1) (at least one
  masked) and predicts the masked tokens at their own positions (LLaDA eq. 3, without the 1/t
  weight: we average per example, which is steadier at this scale), or, with `shift`, from
  the slot before each (the AR alignment, masked.py), the first from <asst>.
- Several questions about one picture (data.vqa_turns) are branches (sequence.py): each has its
  prompt and its own response span with its own t, and sees the picture and itself only.
- Text responses are padded with <eos> to `text_len` so the model learns where an answer
  ends (LLaDA's SFT recipe); padding <eos> tokens weigh `pad_weight` in the loss so a one-word
  answer is not drowned by thirty padding predictions.
- The prompt is causal and the response attends to all of it, so the prompt's keys/values are
  computed once and reused at every unmasking step (MMaDA's full attention over the prompt
  would force recomputing it; we trade that for speed). Inside the response, attention is
  bidirectional.
- Decoding stops after the first block in which every row has produced <eos>; with 8-token
  blocks a short answer costs `steps_per_block` forwards.

Einops legend: B rows, T prompt, L response slots, V text slice, D width.
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
from .base import OnToken, Turn, format_turn
from .masked import IGNORE, Masked, reveal
from .sampling import GREEDY, SamplingConfig
from .sequence import Batch, Builder, Vocab, collate


@dataclass(frozen=True)
class MMaDAConfig:
    cfg_dropout: float = 0.1          # probability of dropping the text condition of t2i / edit
    steps: int = 12                   # image decoding steps
    confidence_noise: float = 0.0
    spread: int = 0                   # image sampling only, see MaskedConfig
    loss_reduction: Literal["token", "sequence"] = "sequence"
    text_len: int = 32                # response slots of a text answer (answer + <eos> padding)
    block: int = 8                    # semi-autoregressive block size (divides text_len)
    steps_per_block: int = 4          # parallel steps per text block
    pad_weight: float = 0.1           # loss weight of padding <eos> after the first one
    shift: bool = False               # predict each masked token from the slot before it (masked.py)

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (1, 10000), "spread": (0, 4096), "text_len": (1, 4096),
                              "block": (1, 4096), "steps_per_block": (1, 4096)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if self.spread < 0:
            raise ValueError(f"spread must be >= 0, got {self.spread}")
        for k in ("steps", "text_len", "block", "steps_per_block"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.text_len % self.block:
            raise ValueError(f"block ({self.block}) must divide text_len ({self.text_len})")
        if self.steps_per_block > self.block:
            raise ValueError(f"steps_per_block ({self.steps_per_block}) must be <= block "
                             f"({self.block}): each step reveals at least one token")
        if not 0 <= self.pad_weight <= 1:
            raise ValueError(f"pad_weight must lie in [0, 1], got {self.pad_weight}")


def block_counts(block: int, steps: int) -> list[int]:
    """Tokens revealed per step inside one block: as even as possible, summing to block."""
    return [block // steps + (1 if s < block % steps else 0) for s in range(steps)]


class MMaDA(Masked):
    name = "mmada"

    def __init__(self, vocab: Vocab, cfg: MMaDAConfig | None = None):
        super().__init__(vocab, cfg or MMaDAConfig())
        self.min_answer = self.cfg.text_len      # the whole response region must fit

    # ---- training -----------------------------------------------------------------------------
    def format_labeled(self, turn: Turn, rng: random.Random):
        """A text turn's prompt, then its answer as a bidirectional response span of
        `text_len` slots with a random share t ~ U(0, 1) of them masked. Follow-up questions
        about the same picture (data.vqa_turns) are branches (sequence.py), each with its own
        prompt, response span and t, so each is trained exactly as it is asked."""
        if turn.task not in ("caption", "vqa"):
            return super().format_labeled(turn, rng)          # images: masked-paradigm recipe
        v, L = self.vocab, self.cfg.text_len
        b = Builder(v).special("<bos>")
        if turn.image is not None:
            b.image(turn.image)
        spans = []
        for q, a in [(turn.text, turn.answer), *turn.followups]:
            ans = list(a) + [v.eos]
            if len(ans) > L:
                raise ValueError(f"an answer of {len(ans) - 1} tokens does not fit "
                                 f"mmada.text_len={L}; raise text_len")
            if turn.followups:
                b.branch()
            b.special("<user>").text(q).special("<asst>")
            spans.append(b.span(ans + [v.eos] * (L - len(ans)), loss=True))
        p = b.build()
        labels = [IGNORE] * len(p)
        for idx in spans:
            t = rng.random()
            chosen = [i for i in idx if rng.random() < t] or [rng.choice(idx)]
            for i in chosen:
                labels[self.label_index(i)] = p.tokens[i]
                p.tokens[i] = v.mask
        p.loss = [lab != IGNORE for lab in labels]
        return p, labels

    def target_weights(self, batch: Batch, labels: Tensor, where: Tensor) -> Tensor:
        """Padding <eos> after an answer's first <eos> weighs `pad_weight`: an <eos> label at a
        slot preceded (in the labels or the visible tokens) by another <eos> of its row."""
        if self.cfg.shift:              # labels sit one slot before the token they predict
            at = F.pad(where[:, :-1], (1, 0))                                  # (B, T) masked
            lab = F.pad(labels[:, :-1], (1, 0), value=IGNORE)
        else:
            at, lab = where, labels
        eos = (torch.where(at, lab, batch.tokens) == self.vocab.eos).long()    # (B, T) clean
        earlier = eos.cumsum(1) - eos                                          # <eos> before t
        if batch.branch is not None:    # count within a branch only: each has its answer
            br = batch.branch
            fresh = torch.ones_like(br, dtype=torch.bool)
            fresh[:, 1:] = br[:, 1:] != br[:, :-1]                             # segment starts
            earlier = earlier - earlier.masked_fill(~fresh, 0).cummax(1).values
        pad = (earlier > 0) & (eos > 0)
        if self.cfg.shift:
            pad = F.pad(pad[:, 1:], (0, 1))                                    # back to labels
        return torch.where(pad[where], self.cfg.pad_weight, 1.0)

    # ---- text sampling ------------------------------------------------------------------------
    def text_evaluations(self, n_blocks: int = 1) -> int:
        return n_blocks * self.cfg.steps_per_block

    @torch.no_grad()
    def generate_text(self, model: TokenModel, turns: list[Turn], max_new: int = 48,
                      sampling: SamplingConfig = GREEDY, generator=None,
                      on_token: OnToken | None = None) -> list[list[int]]:
        """Semi-autoregressive masked-diffusion decoding of a text answer per turn. A block's
        tokens are final when the block is; `on_token` then receives them in order."""
        v, cfg = self.vocab, self.cfg
        L = cfg.text_len
        dev = next(model.parameters()).device
        batch = collate([format_turn(v, t, with_target=False) for t in turns], v.pad,
                        left=True).to(dev)
        B, T = batch.tokens.shape
        cache = model.new_cache(B, T + L, device=dev, reuse=True)
        extra = {k: x.to(dev) for k, x in self.extras_for(turns).items()}
        h_asst = self.hidden(model, batch.tokens, batch.pos, self.prefix_attention(batch),
                             extra, cache=cache, last=True)[:, -1]                    # prompt, once
        t0 = batch.valid.sum(1)                                            # (B,)
        i = torch.arange(L, device=dev)
        pos = (t0[:, None] + i)[..., None].expand(B, L, 3).contiguous()    # (B, L, 3)
        keys = torch.cat([batch.valid, torch.ones(B, L, dtype=torch.bool, device=dev)], 1)
        att = keys[:, None, None, :].expand(B, 1, L, T + L)
        allowed = torch.zeros(v.text_end, dtype=torch.bool, device=dev)
        allowed[:v.n_text] = True
        allowed[v.eos] = True
        out = torch.full((B, L), v.mask, dtype=torch.long, device=dev)
        masked = torch.ones(B, L, dtype=torch.bool, device=dev)
        ended = [False] * B
        for b0 in range(0, L, cfg.block):
            in_block = (i >= b0) & (i < b0 + cfg.block)
            for k in block_counts(cfg.block, cfg.steps_per_block):
                h = self.hidden(model, out, pos, att, {}, cache=cache, start=T)   # (B, L, D)
                logits = self.span_logits(model, h_asst, h, 0, v.text_end)
                logits = logits.masked_fill(~allowed, -math.inf)
                cand, new = reveal(logits, masked & in_block, k, sampling, 0.0, generator)
                out = torch.where(new, cand, out)
                masked = masked & ~new
            if on_token is not None:
                ended = _report_block(out[:, b0:b0 + cfg.block].tolist(), ended, v,
                                      on_token)
            if bool((out[:, :b0 + cfg.block] == v.eos).any(1).all()):
                break
        answers = []
        for row in out.tolist():
            ans = []
            for tok in row:
                if tok in (v.eos, v.mask):
                    break
                ans.append(tok)
            answers.append(ans)
        return answers


def _report_block(block: list[list[int]], ended: list[bool], v: Vocab,
                  on_token: OnToken) -> list[bool]:
    """Send a finished block's tokens (rows of ids) to `on_token` position by position, up
    to each row's end (<eos>, or a slot left masked, sent as <eos>); returns who has ended."""
    ended = list(ended)
    for j in range(len(block[0]) if block else 0):
        step = []
        for b, row in enumerate(block):
            t = row[j]
            if ended[b]:
                step.append(None)
            elif t in (v.eos, v.mask):
                ended[b] = True
                step.append(v.eos)
            else:
                step.append(t)
        on_token(step)
    return ended

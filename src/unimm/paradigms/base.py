"""The paradigm contract and what all token paradigms share.

A paradigm decides four things (PRODUCT.md): how image positions are represented, the attention
mask inside an image span, the image loss, and the image sampler. Everything else (the backbone,
the sequence layout, text decoding, the trainer, evaluation, Pipeline, CLI) is shared and never
branches on the paradigm.

Einops legend: B rows, T prefix length, S keys, N codes per image, D width, V vocabulary slice.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..model.masks import and_padding, same_branch, span_mask
from ..model.unified import TokenModel
from .sampling import GREEDY, SamplingConfig, sample
from .sequence import Batch, Builder, Packed, Vocab, collate

# Text decoding's per-step callback: one token id per row, None for rows that already ended.
OnToken = Callable[[list], None]


@dataclass(frozen=True)
class Turn:
    """What a model is asked to do. `image` / `target_image` are flat code lists; `pixels` is
    the input image itself (H, W, 3) uint8, for paradigms that read images with their own
    encoder (decoupled encoders)."""

    task: str                              # caption | vqa | t2i | edit
    text: list[int]                        # question / prompt / instruction ids
    image: list[int] | None = None         # input image codes
    answer: list[int] | None = None        # target text ids (understanding)
    target_image: list[int] | None = None  # target image codes (generation, editing)
    pixels: object = None                  # input image pixels (np.ndarray) or None
    # Index in `answer` where the final answer starts after written reasoning (a scene
    # description); the reasoning and the final answer (with <eos>) then weigh the same in
    # the loss, so a one-word answer is not drowned by the sentence before it. None = plain.
    answer_from: int | None = None
    # Follow-up turns about the same input image, after the first target (training only;
    # samplers never see them): (question ids, answer ids) for VQA, (instruction ids, target
    # codes) for editing.
    followups: tuple = ()


def format_turn(v: Vocab, turn: Turn, with_target: bool = True) -> Packed:
    """Lay out one turn (see sequence.py). Without target: the prefix a sampler continues."""
    b = Builder(v).special("<bos>")
    if turn.image is not None:
        b.image(turn.image)
    if turn.followups and with_target:
        b.branch()                          # the first question and each follow-up: branches
    b.special("<user>").text(turn.text).special("<asst>")
    if turn.task in ("caption", "vqa"):
        if with_target and turn.answer_from:
            k = turn.answer_from
            w = k / (len(turn.answer) - k + 1)            # reasoning : answer = 1 : 1
            b.text(turn.answer[:k], loss=True).text(turn.answer[k:], loss=True, weight=w)
            b.special("<eos>", loss=True, weight=w)
        elif with_target:
            b.text(turn.answer, loss=True).special("<eos>", loss=True)
        for q, a in turn.followups if with_target else ():
            b.branch().special("<user>").text(q).special("<asst>")
            b.text(a, loss=True).special("<eos>", loss=True)
    elif with_target:
        b.image(turn.target_image, loss=True).special("<eos>", loss=True)
        for q, codes in turn.followups:     # further edits of the same source: branches
            b.branch().special("<user>").text(q).special("<asst>")
            b.image(codes, loss=True).special("<eos>", loss=True)
    else:
        b.special("<boi>")
    return b.build()


class Layout:
    """How a turn becomes a token sequence: ours is `format_turn`. A released checkpoint
    brings its own chat format (runs/families: Janus's "<|User|>: ...", Emu3's "USER: ...
    ASSISTANT:"), set as the paradigm's `layout`; the trainer, samplers and Pipeline only ever
    ask the layout, so a checkpoint runs on the same engine."""

    def __call__(self, v: Vocab, turn: Turn, with_target: bool = True) -> Packed:
        return format_turn(v, turn, with_target)

    def uncond(self, v: Vocab, turn: Turn, with_target: bool = False) -> Packed | None:
        """The guidance twin of a generation turn when the format defines one (Emu3's
        negative prompt); None: the paradigm's own rule (ARConfig.uncond)."""
        return None


def drop_condition(turn: Turn) -> Turn:
    """The unconditional twin of a generation turn, for classifier-free guidance: the text is
    dropped (every follow-up edit's instruction too), an input image (editing) is kept."""
    return Turn(turn.task, [], turn.image, turn.answer, turn.target_image, turn.pixels,
                turn.answer_from, tuple(([], codes) for _, codes in turn.followups))


def reduce_loss(per_target: Tensor, where: Tensor, how: str = "token",
                weight: Tensor | None = None) -> Tensor:
    """Average per-target losses (M,) taken at the True entries of `where` (B, T), row-major:
    "token" = mean over all M targets; "sequence" = mean over rows of each row's mean (rows
    without targets are skipped). Optional per-target weights (M,) make both means weighted."""
    if how not in ("token", "sequence"):
        raise ValueError(f"unknown loss reduction {how!r}; known: token, sequence")
    w = torch.ones_like(per_target) if weight is None else weight.to(per_target.dtype)
    if how == "token":
        return (w * per_target).sum() / w.sum()
    counts = where.sum(1)                                            # (B,)
    row = torch.repeat_interleave(torch.arange(where.shape[0], device=where.device), counts)
    num = torch.zeros(where.shape[0], device=per_target.device,
                      dtype=per_target.dtype).index_add_(0, row, w * per_target)
    den = torch.zeros_like(num).index_add_(0, row, w)
    has = den > 0
    return (num[has] / den[has]).mean()


def text_image_stats(ce: Tensor, is_img: Tensor) -> dict[str, float]:
    """Mean per-target loss of text and of image targets, for the training log."""
    nan = float("nan")
    return {"loss/text": ce[~is_img].mean().item() if (~is_img).any() else nan,
            "loss/image": ce[is_img].mean().item() if is_img.any() else nan}


def prefix_mask(valid: Tensor) -> Tensor:
    """(B, T) key validity of a left-padded prefix -> (B, 1, T, T) causal 'may attend' mask.
    The diagonal stays open so padding rows never attend to nothing (no NaN)."""
    T = valid.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=valid.device)
    return ((causal & valid[:, None, :]) | eye)[:, None]


class Paradigm:
    """Base class: text understanding is autoregressive in every token paradigm."""

    name = "base"
    bidirectional_images = False
    min_answer = 16          # answer slots a question must leave room for (Pipeline checks)

    def __init__(self, vocab: Vocab):
        self.vocab = vocab
        self.layout = Layout()

    # ---- construction -------------------------------------------------------------------------
    def attach(self, model: TokenModel, image_tok) -> None:
        """Add the paradigm's own modules to `model.extras` (saved and loaded with the model:
        latent projections, a semantic encoder, ...) and keep what it needs of the image
        tokenizer. Called once, right after the model is built. Default: nothing."""

    def init_pretrained(self, model: TokenModel) -> None:
        """Load pretrained parts (say, a contrastively trained encoder) into a *fresh* model.
        Called by the trainer only, before a warm start or resume; never when a saved run is
        reloaded. Default: nothing."""

    def to_pixels(self, image_tok, images: Tensor):
        """What generate_images returned -> (B, H, W, 3) uint8 images. Default: (B, N) codes."""
        grid = images.reshape(len(images), *self.vocab.grid).cpu()
        return image_tok.decode(grid)

    def extras_for(self, turns: list[Turn]) -> dict:
        """The paradigm's own per-batch inputs, beyond tokens (say, input-image pixels for a
        separate encoder), as tensors; rows follow `turns`. Default: none."""
        return {}

    def embed(self, model: TokenModel, tokens: Tensor, pos: Tensor, extra: dict) -> Tensor:
        """(B, T) tokens -> (B, T, D) input embeddings. Paradigms that read (some) image spans
        through their own modules override this. Default: the token model's embeddings."""
        return model.embed_tokens(tokens, pos)

    def attention(self, span: Tensor, valid: Tensor, branch: Tensor | None = None) -> Tensor:
        """(B, 1, T, T) mask of whole sequences with span ids (B, T) and validity (B, T):
        causal over the valid tokens, and bidirectional inside each span when the paradigm's
        `bidirectional_images` says so (Transfusion / Show-o), in training and answering alike.
        Branch ids (B, T) (training batches with several turns per picture, sequence.py) keep
        each branch to the shared prefix and itself."""
        m = (and_padding(span_mask(span), valid)[:, None] if self.bidirectional_images
             else prefix_mask(valid))
        return m if branch is None else m & same_branch(branch)[:, None]

    def training_mask(self, batch: Batch) -> Tensor | None:
        """Attention mask (B, 1, T, T) of a right-padded training batch: `attention` over whole
        sequences, branches kept apart. An override may return None for plain causal (the
        backbone's fast path), as the AR paradigm does."""
        return self.attention(batch.span, batch.valid, batch.branch)

    def prefix_attention(self, batch: Batch) -> Tensor:
        """Attention mask (B, 1, T, T) of a left-padded prompt batch."""
        return self.attention(batch.span, batch.valid)

    def hidden(self, model: TokenModel, tokens: Tensor, pos: Tensor, mask, extra: dict,
               cache=None, start: int = 0, last: bool = False) -> Tensor:
        """Hidden states (B, T, D), or (B, 1, D) of the last token (`last`, a prompt fill)."""
        return model.backbone(self.embed(model, tokens, pos, extra), pos, mask, cache=cache,
                              start=start, last=last)

    # ---- training -----------------------------------------------------------------------------
    def format(self, turn: Turn, rng: random.Random) -> Packed:
        return self.layout(self.vocab, turn)

    def make_batch(self, turns: list[Turn], rng: random.Random) -> Batch:
        """Training batch from turns: format each, right-pad, attach extras_for(turns)."""
        seqs = [self.format(t, rng) for t in turns]
        batch = collate(seqs, self.vocab.pad, [t.task for t in turns])
        batch.extra = self.extras_for(turns)
        return batch

    def loss(self, model: TokenModel, batch: Batch, generator: torch.Generator | None = None):
        raise NotImplementedError

    def loss_share(self, batch: Batch) -> float:
        """What `loss` averages over in this batch, so that the losses of a batch's row groups
        (train.length_groups) add up, weighted by their shares, to the loss of the whole batch:
        here the rows with targets (exact for per-sequence averaging; with per-token averaging
        a paradigm that knows its targets overrides it, as the AR paradigm does)."""
        return float(batch.loss.any(1).sum())

    # ---- sampling -----------------------------------------------------------------------------
    def function_evaluations(self) -> int:
        """Backbone forwards to sample one image (guidance rows share a forward). Default: one
        per code, as in autoregressive decoding."""
        return self.vocab.n_image

    @torch.no_grad()
    def generate_images(self, model: TokenModel, turns: list[Turn], guidance: float,
                        sampling: SamplingConfig, generator=None) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def generate_text(self, model: TokenModel, turns: list[Turn], max_new: int = 48,
                      sampling: SamplingConfig = GREEDY, generator=None,
                      on_token: OnToken | None = None) -> list[list[int]]:
        """Answer each turn: KV-cached autoregressive decoding over the text slice
        (text tokens + <eos>), batched over rows with left padding. `on_token` receives each
        step's tokens, one per row (None for rows that already ended), as they are decoded."""
        v = self.vocab
        prefixes = [self.layout(v, t, with_target=False) for t in turns]
        dev = next(model.parameters()).device
        batch = collate(prefixes, v.pad, left=True).to(dev)
        tokens, pos, valid = batch.tokens, batch.pos, batch.valid
        B, T = tokens.shape
        cache = model.new_cache(B, T + max_new, device=dev, reuse=True)
        extra = {k: x.to(dev) for k, x in self.extras_for(turns).items()}
        h = self.hidden(model, tokens, pos, self.prefix_attention(batch), extra,
                        cache=cache, last=True)[:, -1]
        allowed = torch.zeros(v.text_end, dtype=torch.bool, device=dev)
        allowed[:v.n_text] = True
        allowed[v.eos] = True
        nxt = valid.sum(1)                                   # next sequence index per row
        out = [[] for _ in range(B)]
        done = [False] * B
        slots = model.decode_slots(valid, cache)
        logits = model.logits(h, 0, v.text_end).float()
        for k in range(max_new):
            tok = sample(logits.masked_fill(~allowed, float("-inf")), sampling, generator)  # (B,)
            step = tok.tolist()                      # one transfer, not a tensor op per row
            if on_token is not None:
                on_token([None if d else t for d, t in zip(done, step)])
            for b, t in enumerate(step):
                if not done[b]:
                    if t == v.eos:
                        done[b] = True
                    else:
                        out[b].append(t)
            if all(done) or k == max_new - 1:
                break
            p = (nxt + k)[:, None, None].expand(B, 1, 3)
            logits = model.decode_logits(tok[:, None], p, slots, cache, T + k, 0, v.text_end)
        return out

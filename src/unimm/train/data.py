"""Training data: a world's task source (data/worlds.py) -> examples -> token turns -> batches.

The stream is a pure function of (seed, offset, step): batch s holds examples
offset+s*B .. offset+s*B+B-1 of the train split, each task drawn from the mixture by a generator
seeded with (seed, s). Resuming at step s therefore reproduces the exact batch without saving
any RNG state.
"""

from __future__ import annotations

import random

import numpy as np

from ..data.splits import Example
from ..paradigms.base import Paradigm, Turn
from ..paradigms.sequence import Batch


class Encoder:
    """Examples -> Turns: text through the BPE, images through the image tokenizer (batched)."""

    def __init__(self, text_tok, image_tok):
        self.text = text_tok
        self.image = image_tok

    def ids(self, s: str) -> list[int]:
        return self.text.encode(s)

    def codes(self, images: list[np.ndarray]) -> list[list[int]]:
        if not images:
            return []
        c = self.image.encode(np.stack(images))               # (n, h, w)
        return c.reshape(len(images), -1).tolist()

    def turns(self, examples: list[Example]) -> list[Turn]:
        imgs = [e.image for e in examples if e.image is not None]
        # targets, then every follow-up's target image (edit branches), in one encoder call
        tgts = [e.target_image for e in examples if e.target_image is not None]
        tgts += [a for e in examples for _, a in e.meta.get("followups", ())
                 if isinstance(a, np.ndarray)]
        codes, n_tgt = self.codes(tgts), sum(e.target_image is not None for e in examples)
        img_codes, tgt_codes = iter(self.codes(imgs)), iter(codes[:n_tgt])
        fu_codes = iter(codes[n_tgt:])
        out = []
        for e in examples:
            answer, start = self.answer_ids(e)
            out.append(Turn(
                e.task, self.ids(e.text),
                next(img_codes) if e.image is not None else None,
                answer, next(tgt_codes) if e.target_image is not None else None,
                e.image, start,
                tuple((self.ids(q), next(fu_codes) if isinstance(a, np.ndarray) else self.ids(a))
                      for q, a in e.meta.get("followups", ()))))
        return out

    def answer_ids(self, e: Example) -> tuple[list[int] | None, int | None]:
        """Target text ids, and where the final answer starts when the target reasons first
        (it then ends with e.meta['answer'] after a description)."""
        if e.target_text is None:
            return None, None
        final = e.meta.get("answer")
        if not final or e.target_text == final or not e.target_text.endswith(final):
            return self.ids(e.target_text), None
        cut = len(e.target_text) - len(final)
        cut -= e.target_text[cut - 1:cut].isspace()      # keep the space with the answer,
        head = self.ids(e.target_text[:cut])             # as the BPE does (" one" is one token)
        return head + self.ids(e.target_text[cut:]), len(head)


class TaskStream:
    def __init__(self, source, encoder: Encoder, paradigm: Paradigm, weights: dict[str, float],
                 batch_size: int, seed: int, offset: int = 0):
        self.source, self.enc, self.paradigm = source, encoder, paradigm
        self.offset = offset
        self.tasks = list(weights)
        self.weights = [weights[t] for t in self.tasks]
        self.B, self.seed = batch_size, seed

    def batch(self, step: int) -> Batch:
        rng = random.Random(self.seed * 1_000_003 + step)
        idx = range(self.offset + step * self.B, self.offset + (step + 1) * self.B)
        tasks = rng.choices(self.tasks, self.weights, k=self.B)
        examples = [self.source.example(i, t) for i, t in zip(idx, tasks)]
        return self.paradigm.make_batch(self.enc.turns(examples), rng)

"""Sampling utilities shared by every decoder: greedy / temperature / top-k / top-p, and
classifier-free guidance on batched rows.

Einops legend: B rows, V vocabulary slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 1.0      # 0 = greedy
    top_k: int = 0                # 0 = off
    top_p: float = 1.0            # 1 = off

    def __post_init__(self):
        for name in ("temperature", "top_p"):
            x = getattr(self, name)
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                raise ValueError(f"{name} must be a finite number, got {x!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int):
            raise ValueError(f"top_k must be an integer, got {self.top_k!r}")
        if not 0 <= self.temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature must lie in [0, {MAX_TEMPERATURE:g}], "
                             f"got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


MAX_TEMPERATURE = 100.0   # accepted temperatures: [0, MAX_TEMPERATURE]
# Below this, softmax(logits / T) is one-hot at float32 for any logit gap the models produce,
# and dividing by T would overflow to inf (then NaN): sample() takes the limit, the argmax.
GREEDY_BELOW = 1e-6
GREEDY = SamplingConfig(temperature=0.0)
MAX_GUIDANCE = 20.0   # accepted classifier-free guidance scales: [0, MAX_GUIDANCE]


def sample(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None = None) -> Tensor:
    """(B, V) logits -> (B,) indices into the slice. Temperatures below GREEDY_BELOW (0
    included) are greedy: the limit of the distribution as T -> 0."""
    if cfg.temperature < GREEDY_BELOW:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[-1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > cfg.top_p      # keep the token that crosses p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def guide(logits: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance over stacked rows [cond; uncond] (2B, V) -> (B, V):
    uncond + scale * (cond - uncond). scale 1 returns the conditional logits."""
    cond, uncond = logits.chunk(2, dim=0)
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)

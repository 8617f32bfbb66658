"""Schedule, budget and progress: what every training loop here shares (the model trainer,
train/trainer.py; the image tokenizer's, train/tokenizer.py; the contrastive encoder's,
train/contrastive.py).

- `lr_at`: linear warm-up over `warmup_steps`, then a cosine from `lr` down to
  `min_ratio * lr` over the rest of a horizon of steps, or over the elapsed fraction of a
  wall-clock budget (`time_frac`).
- `Budget`: a wall-clock budget that continues the time a resumed run already spent.
- `progress_bar`: the tqdm bar every loop shows (rate and ETA; `write` prints above it).
"""

from __future__ import annotations

import math
import time

from tqdm.auto import tqdm


def lr_at(step: int, lr: float, warmup_steps: int, horizon: int, min_ratio: float = 0.1,
          time_frac: float | None = None) -> float:
    """The learning rate of `step` (0-based) in a schedule of `horizon` steps (warm-up
    included); with `time_frac` the cosine follows it (clamped to [0, 1]) instead of the steps,
    so the rate reaches its floor when a wall-clock budget ends however fast the steps went."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if time_frac is None:
        frac = min(1.0, (step - warmup_steps) / max(1, horizon - warmup_steps))
    else:
        frac = min(1.0, max(0.0, time_frac))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


class Budget:
    """A wall-clock budget of `minutes` (0: none), counted from `spent_s` seconds already
    spent (a resumed run's), from now on."""

    def __init__(self, minutes: float, spent_s: float = 0.0):
        self.seconds = 60.0 * minutes
        self._start = time.perf_counter() - spent_s

    def __bool__(self) -> bool:
        return self.seconds > 0

    @property
    def elapsed(self) -> float:
        """Seconds spent, the earlier ones included."""
        return time.perf_counter() - self._start

    def spent(self, elapsed: float | None = None) -> bool:
        """Whether the budget is used up (never, without one)."""
        return bool(self) and (self.elapsed if elapsed is None else elapsed) >= self.seconds

    def fraction(self, elapsed: float | None = None) -> float | None:
        """The share of the budget spent (None without one)."""
        return (self.elapsed if elapsed is None else elapsed) / self.seconds if self else None


def progress_bar(total: int, desc: str, enabled: bool = True, initial: int = 0,
             unit: str = "step"):
    """A progress bar over `total` steps (advanced with `update(1)`), rate and ETA shown."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled,
                dynamic_ncols=True, mininterval=1.0)

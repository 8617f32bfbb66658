"""The schedule / budget / progress module every training loop shares (train/schedule.py)."""

import math

import pytest

from unimm.train.schedule import Budget, lr_at, progress_bar


def test_warm_up_then_cosine_to_the_floor():
    # the tokenizer's and the encoder's loops decay to 10 %, as their own copies did
    def old(step, lr=2e-3, warmup=100, steps=1500):
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
    for step in (0, 50, 99, 100, 101, 700, 1499, 1500, 4000):
        assert lr_at(step, 2e-3, 100, 1500) == old(step)
    assert lr_at(0, 1.0, 0, 10) == 1.0 and lr_at(10, 1.0, 0, 10, min_ratio=0.0) == 0.0
    # on a wall-clock budget the cosine follows the elapsed fraction, clamped
    assert lr_at(50, 1.0, 10, 100, 0.1, time_frac=0.5) == pytest.approx(0.55)
    assert lr_at(50, 1.0, 10, 100, 0.1, time_frac=2.0) == lr_at(50, 1.0, 10, 100, 0.1, 1.0)
    assert lr_at(50, 1.0, 10, 100, 0.1, time_frac=-1.0) == 1.0


def test_a_budget_continues_the_time_already_spent():
    none = Budget(0)
    assert not none and not none.spent(1e9) and none.fraction() is None
    b = Budget(1.0, spent_s=30.0)
    assert b and 30.0 <= b.elapsed < 40.0 and b.seconds == 60.0
    assert not b.spent() and b.spent(60.0) and b.fraction(15.0) == 0.25
    assert Budget(1.0, spent_s=61.0).spent()


def test_progress_bar_counts_steps():
    bar = progress_bar(10, "x", enabled=True, initial=3)
    bar.update(2)
    assert bar.n == 5 and bar.total == 10
    bar.close()

"""Fixed-step ODE solvers for flow-matching samplers: dx/dt = v(x, t) from t0 to t1.

Paradigm-neutral: the caller supplies the velocity function (a network forward, guidance
included) and gets the endpoint and the number of velocity evaluations it cost (NFE, the unit
in which flow samplers are compared; one batched CFG forward counts once).

Notable choices:
- A uniform time grid. Rectified flow's near-straight paths make Euler with ~10 steps usable
  (Liu et al. 2022, arXiv:2209.03003); Heun (explicit trapezoid, 2nd order) halves the error
  per halving of the step size twice over, at 2 evaluations per step (EDM, Karras et al. 2022,
  Alg. 1, without its stochastic churn).
- Time is passed as a Python float: every row shares one time, so the network can embed it
  once, and the solver never needs to know the batch layout.

Letters: x any shape (the solver is elementwise in x), t scalar time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from torch import Tensor

Velocity = Callable[[Tensor, float], Tensor]     # (x, t) -> dx/dt, same shape as x
Method = Literal["euler", "heun"]
METHODS: tuple[str, ...] = ("euler", "heun")


def evaluations(method: Method, steps: int) -> int:
    """Velocity evaluations a solve costs: `steps` for Euler, 2 * steps for Heun."""
    return steps * (2 if method == "heun" else 1)


def integrate(velocity: Velocity, x0: Tensor, steps: int, method: Method = "euler",
              t0: float = 0.0, t1: float = 1.0) -> tuple[Tensor, int]:
    """Integrate dx/dt = velocity(x, t) from (x0, t0) to t1 in `steps` uniform steps.
    Returns (x at t1, number of velocity evaluations)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in METHODS:
        raise ValueError(f"unknown ODE method {method!r}; known: {', '.join(METHODS)}")
    dt = (t1 - t0) / steps
    x, nfe = x0, 0
    for i in range(steps):
        t = t0 + i * dt
        v = velocity(x, t)
        nfe += 1
        if method == "euler":
            x = x + dt * v
        else:                                         # Heun: predictor, then trapezoid
            x_pred = x + dt * v
            v_next = velocity(x_pred, t + dt)
            nfe += 1
            x = x + 0.5 * dt * (v + v_next)
    return x, nfe

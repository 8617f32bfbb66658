"""Paradigms: each is one module behind the `Paradigm` contract (base.py), listed here.

Adding a paradigm adds a file and an entry in PARADIGMS; nothing else branches on the name.
"""

from __future__ import annotations

from typing import Literal

from .ar import ARConfig, Autoregressive
from .decoupled import Decoupled, DecoupledConfig
from .flow import Flow, FlowConfig
from .masked import Masked, MaskedConfig
from .mmada import MMaDA, MMaDAConfig
from .base import Paradigm, Turn
from .sequence import Vocab

# Every name a config may give; PARADIGMS holds the ones implemented so far.
ParadigmName = Literal["ar", "masked", "flow", "decoupled", "mmada"]

# name -> (class, the RunConfig field holding its sub-config)
PARADIGMS: dict[str, tuple[type[Paradigm], str]] = {
    "ar": (Autoregressive, "ar"),
    "decoupled": (Decoupled, "decoupled"),
    "flow": (Flow, "flow"),
    "masked": (Masked, "masked"),
    "mmada": (MMaDA, "mmada"),
}


def build_paradigm(name: str, vocab: Vocab, run_cfg) -> Paradigm:
    if name not in PARADIGMS:
        raise ValueError(f"paradigm {name!r} is not available; available: {', '.join(PARADIGMS)}")
    cls, field = PARADIGMS[name]
    return cls(vocab, getattr(run_cfg, field))


__all__ = ["PARADIGMS", "ParadigmName", "Paradigm", "Turn", "Vocab", "build_paradigm",
           "ARConfig", "Autoregressive", "Decoupled", "DecoupledConfig", "Flow", "FlowConfig", "Masked", "MaskedConfig", "MMaDA", "MMaDAConfig"]

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

# name -> (class, its config: the run's table of the same name, [ar], [masked], ...)
PARADIGMS: dict[str, tuple[type[Paradigm], type]] = {
    "ar": (Autoregressive, ARConfig),
    "decoupled": (Decoupled, DecoupledConfig),
    "flow": (Flow, FlowConfig),
    "masked": (Masked, MaskedConfig),
    "mmada": (MMaDA, MMaDAConfig),
}
PARADIGM_CONFIGS: dict[str, type] = {name: c for name, (_, c) in PARADIGMS.items()}


def build_paradigm(name: str, vocab: Vocab, cfg=None) -> Paradigm:
    """The paradigm `name` with its own config (`cfg`: an instance of its config class;
    None: the defaults)."""
    if name not in PARADIGMS:
        raise ValueError(f"paradigm {name!r} is not available; available: {', '.join(PARADIGMS)}")
    cls, config = PARADIGMS[name]
    cfg = config() if cfg is None else cfg
    if not isinstance(cfg, config):
        raise TypeError(f"paradigm {name!r} takes a {config.__name__}, got {type(cfg).__name__}")
    return cls(vocab, cfg)


__all__ = ["PARADIGMS", "PARADIGM_CONFIGS", "ParadigmName", "Paradigm", "Turn", "Vocab",
           "build_paradigm", "ARConfig", "Autoregressive", "Decoupled", "DecoupledConfig", "Flow",
           "FlowConfig", "Masked", "MaskedConfig", "MMaDA", "MMaDAConfig"]

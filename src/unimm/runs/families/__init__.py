"""Released checkpoints as runs: a family adapter maps a transformers checkpoint folder onto
our modules (FAMILIES; one module each), so the same sampler, caches, compiled decoding,
trainer and server run it.

janus.py   Janus / Janus-Pro (`model_type: janus`): answers and draws
janus_names.py  our tensor names <-> transformers' Janus names (also used by interop/janus.py)
emu3.py    Emu3 (`model_type: emu3`; Gen and Chat): draws on a constrained grid, answers
common.py  errors, weights of a folder (safetensors, sharded or not), dtypes
"""

from __future__ import annotations

from pathlib import Path

from ...utils.io import read_json
from . import emu3, janus
from .common import DTYPES, FamilyError

FAMILIES = {"janus": janus, "emu3": emu3}
# layouts that need a converter first (model_type -> the command)
CONVERT = {"multi_modality": "unimm convert janus-original SRC OUT"}


def detect(folder: str | Path) -> str | None:
    """The family of a checkpoint folder (its config.json's model_type), None for one of our
    runs; FamilyError for another model type or a layout that needs converting."""
    p = Path(folder) / "config.json"
    if not p.is_file():
        return None
    try:
        d = read_json(p)
    except ValueError:
        return None
    if not isinstance(d, dict) or "format" in d:         # ours: {"format": "unimm.run", ...}
        return None
    kind = d.get("model_type")
    if kind in FAMILIES:
        return kind
    if kind in CONVERT:
        raise FamilyError(f"{folder} is DeepSeek's original Janus layout (model_type "
                          f"{kind!r}, pickle .bin shards); convert it to transformers' layout "
                          f"once: {CONVERT[kind]}")
    raise FamilyError(f"{folder}: model_type {kind!r} is not a supported family; supported: "
                      f"{', '.join(FAMILIES)} (transformers checkpoint folders), or a unimm run")


def load(folder: str | Path, device, dtype: str | None = None, image_size: int | None = None):
    """Parts of a released checkpoint folder of a supported family; `image_size`: the side
    of the images it draws, for families that draw at several sizes (Emu3)."""
    return FAMILIES[detect(folder)].load(Path(folder), device, dtype, image_size)


__all__ = ["FAMILIES", "DTYPES", "FamilyError", "detect", "load"]

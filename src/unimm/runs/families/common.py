"""What every family adapter shares: its errors, the weights of a checkpoint folder, dtypes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ...utils.io import read_json

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class FamilyError(ValueError):
    """A released checkpoint that cannot be loaded, or a request its model cannot serve."""


def need_transformers(family: str) -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise FamilyError(f"loading a {family} checkpoint reuses transformers' modules for "
                          f"its vision encoder and VQ-VAE: pip install 'unimm[hf]'") from None


def torch_dtype(name: str | None, config: dict) -> torch.dtype:
    """The dtype asked for ("fp32" | "bf16" | "fp16"), or float32 by default (CPU kernels
    and exact parity; the checkpoint's own dtype is only a storage choice)."""
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise FamilyError(f"unknown dtype {name!r}; choose {', '.join(DTYPES)}")
    return DTYPES[name]


def load_state(folder: Path) -> dict[str, Tensor]:
    """Every tensor of a checkpoint folder's safetensors files: model.safetensors, or the
    shards a model.safetensors.index.json lists. (`.bin` shards are pickles: the converter
    reads those, never the loader.)"""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        bins = sorted(p.name for p in folder.glob("*.bin"))
        hint = (" (pickle .bin shards: convert them once with `unimm convert janus-original`)"
                if bins else "")
        raise FamilyError(f"{folder}: no model.safetensors or model.safetensors.index.json"
                          + hint)
    state: dict[str, Tensor] = {}
    for f in files:
        try:
            state.update(load_file(str(folder / f)))
        except (SafetensorError, OSError) as e:
            raise FamilyError(f"{folder / f}: not a readable safetensors file ({e})") from None
    return state

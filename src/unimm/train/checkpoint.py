"""Checkpoints: safetensors for every tensor (model, EMA, optimizer moments), JSON for the rest.

A checkpoint folder is written beside the old one and swapped in with renames, so a kill at any
moment leaves either the old or the new checkpoint whole. Loading checks that the weights fit
the configured model and names the file and the mismatch otherwise.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class CheckpointError(ValueError):
    pass


def save_weights(module_or_sd, path: Path) -> None:
    sd = module_or_sd.state_dict() if hasattr(module_or_sd, "state_dict") else module_or_sd
    save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(path))


def load_weights(module: torch.nn.Module, path: Path, allow_missing: bool = False) -> list[str]:
    """Load safetensors weights into module, strictly, with clear errors. With allow_missing
    (warm starts), parameters absent from the file keep their values; returns their names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); "
                              "the checkpoint is corrupt or truncated") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(sd))
    kept, missing = (missing, []) if allow_missing else ([], missing)
    extra = sorted(set(sd) - set(own))
    shapes = [f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise CheckpointError(f"{path} does not match the configured model: "
                              + ", ".join(parts) + " (config.json and weights disagree)")
    module.load_state_dict(sd, strict=not allow_missing)
    return kept


def _opt_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.contiguous().cpu()
            else:
                meta["state"][str(idx)][k] = v
    return tensors, meta


def _opt_from_tensors(opt, tensors: dict, meta: dict) -> None:
    state = {}
    for idx, extra in meta["state"].items():
        st = dict(extra)
        for key, v in tensors.items():
            i, name = key.split(".", 1)
            if i == idx:
                st[name] = v
        state[int(idx)] = st
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(ckpt_dir: Path, model, opt, ema, state: dict) -> None:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".ckpt.", dir=ckpt_dir.parent))
    try:
        save_weights(model, tmp / "model.safetensors")
        if ema is not None:
            save_weights(ema, tmp / "ema.safetensors")
        tensors, meta = _opt_to_tensors(opt)
        save_file(tensors, str(tmp / "optim.safetensors"))
        (tmp / "optim.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        old = ckpt_dir.with_name(ckpt_dir.name + ".old")
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def find_checkpoint(ckpt_dir: Path) -> Path | None:
    """The complete checkpoint folder (the new one, or the old one if a swap was cut short)."""
    ckpt_dir = Path(ckpt_dir)
    for d in (ckpt_dir, ckpt_dir.with_name(ckpt_dir.name + ".old")):
        if (d / "state.json").is_file():
            return d
    return None


def load_checkpoint(ckpt_dir: Path, model, opt, ema) -> dict:
    d = find_checkpoint(ckpt_dir)
    if d is None:
        raise CheckpointError(f"no checkpoint in {ckpt_dir}")
    load_weights(model, d / "model.safetensors")
    if ema is not None and (d / "ema.safetensors").is_file():
        load_weights(ema, d / "ema.safetensors")
    try:
        tensors = load_file(str(d / "optim.safetensors"))
        meta = json.loads((d / "optim.json").read_text())
        state = json.loads((d / "state.json").read_text())
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{d}: optimizer state or state.json unreadable ({e})") from None
    _opt_from_tensors(opt, tensors, meta)
    return state

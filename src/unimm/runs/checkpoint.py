"""Checkpoints: safetensors for every tensor (model, EMA, optimizer moments), JSON for the rest.

A checkpoint folder is written beside the old one and swapped in with renames, so a kill at any
moment leaves either the old or the new checkpoint whole; its state.json records the sha256 of
each weights file, verified when it is loaded. A kill leaves at most temporary folders and
files behind; `remove_stale` clears them when the run starts or resumes. Loading checks that the
weights fit the configured model and names the file and the mismatch otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..utils.io import TMP_FILE_GLOB, atomic_path, read_json

CKPT_TMP_PREFIX = ".ckpt."


class CheckpointError(ValueError):
    pass


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def save_weights(module_or_sd, path: Path) -> str:
    """Write a module's (or a state dict's) tensors as safetensors, atomically; returns the
    file's sha256 (runs and checkpoints record it; loading verifies it)."""
    sd = module_or_sd.state_dict() if hasattr(module_or_sd, "state_dict") else module_or_sd
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in sd.items()}, str(tmp))
        digest = sha256_file(tmp)
    return digest


def verify_sha256(path: Path, expected: str | None) -> None:
    """CheckpointError if the file's sha256 is not `expected` (None: nothing recorded)."""
    if expected is not None and sha256_file(path) != expected:
        raise CheckpointError(f"corrupt: checksum mismatch in {Path(path).name} ({path}: its "
                              f"sha256 is not the one recorded when it was written); restore "
                              f"the file or train the run again")


def load_weights(module: torch.nn.Module, path: Path, allow_missing: bool = False,
                 sha256: str | None = None) -> list[str]:
    """Load safetensors weights into module, strictly, with clear errors; `sha256`: the
    recorded checksum, verified first. With allow_missing (warm starts), parameters absent
    from the file keep their values; returns their names."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing weights file {path}")
    verify_sha256(path, sha256)
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
    tmp = Path(tempfile.mkdtemp(prefix=CKPT_TMP_PREFIX, dir=ckpt_dir.parent))
    try:
        sums = {"model.safetensors": save_weights(model, tmp / "model.safetensors")}
        if ema is not None:
            sums["ema.safetensors"] = save_weights(ema, tmp / "ema.safetensors")
        tensors, meta = _opt_to_tensors(opt)
        sums["optim.safetensors"] = save_weights(tensors, tmp / "optim.safetensors")
        (tmp / "optim.json").write_text(json.dumps(meta))
        (tmp / "state.json").write_text(json.dumps({**state, "sha256": sums}, indent=2))
        old = ckpt_dir.with_name(ckpt_dir.name + ".old")
        if ckpt_dir.exists():
            shutil.rmtree(old, ignore_errors=True)
            ckpt_dir.rename(old)
        tmp.rename(ckpt_dir)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale(run_dir: Path) -> list[Path]:
    """Delete what a killed write left in a run folder: temporary checkpoint folders
    (`.ckpt.*`) and temporary files of atomic writes (`.*.tmp`, in the folder and its
    subfolders); never anything else. Call only while no other process writes the run.
    Returns what was removed."""
    run_dir = Path(run_dir)
    gone = []
    for p in sorted(run_dir.glob(CKPT_TMP_PREFIX + "*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    for p in sorted(run_dir.rglob(TMP_FILE_GLOB)):
        if p.is_file():
            p.unlink(missing_ok=True)
            gone.append(p)
    return gone


def weights_sha256(ckpt: Path, name: str) -> str | None:
    """The sha256 a checkpoint folder's state.json records for one of its files (None for a
    checkpoint written before checksums were recorded)."""
    try:
        sums = read_json(Path(ckpt) / "state.json").get("sha256") or {}
    except (ValueError, AttributeError):
        return None
    return sums.get(name)


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
    try:
        state = read_json(d / "state.json")
        sums = state.get("sha256") or {}
    except (ValueError, AttributeError) as e:
        raise CheckpointError(f"{d}: state.json unreadable ({e})") from None
    load_weights(model, d / "model.safetensors", sha256=sums.get("model.safetensors"))
    if ema is not None and (d / "ema.safetensors").is_file():
        load_weights(ema, d / "ema.safetensors", sha256=sums.get("ema.safetensors"))
    verify_sha256(d / "optim.safetensors", sums.get("optim.safetensors"))
    try:
        tensors = load_file(str(d / "optim.safetensors"))
        meta = read_json(d / "optim.json")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{d}: optimizer state unreadable ({e})") from None
    _opt_from_tensors(opt, tensors, meta)
    return state

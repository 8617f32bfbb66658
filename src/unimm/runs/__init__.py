"""Run folders: what a run records and how it is loaded (below the Pipeline, the trainer and
the evaluator, which all read runs through this package).

config.py      RunConfig (composes the sub-configs), TrainConfig, TokenizerTrainConfig,
               EvalConfig, PRECISIONS
folder.py      the folder layout: save/load config.json, weights with their sha256, tokenizers,
               build_parts / load_run -> Parts, resolve_device, RunError
checkpoint.py  safetensors weights and resumable checkpoints, checksums, remove_stale
families/      released checkpoints (transformers folders: Janus, Emu3) mapped onto our modules

`load_run` reads either kind of folder: one of our runs, or a released checkpoint of a
supported family (detected from its config.json).

Training tokenizers for a run is a training step (unimm.train.tokenizer); this package only
loads them.
"""

from .checkpoint import CheckpointError
from .config import PRECISIONS, EvalConfig, RunConfig, TokenizerTrainConfig, TrainConfig
from . import families
from .families import FamilyError
from .folder import (
    WEIGHTS,
    Parts,
    RunError,
    build_parts,
    has_tokenizers,
    load_config,
    load_tokenizers,
    recorded_weights,
    resolve_device,
    save_config,
    save_run_weights,
)
from .folder import load_run as load_own_run


def load_run(run_dir, device="cpu", dtype: str | None = None,
             image_size: int | None = None) -> Parts:
    """A run folder of ours, or a released checkpoint folder of a supported family (its
    weights in `dtype`: "fp32" (default), "bf16" or "fp16"; `image_size`: the side of the
    images it draws, where the family draws at several), ready for inference."""
    if families.detect(run_dir) is not None:
        return families.load(run_dir, device, dtype, image_size)
    if image_size is not None:
        raise RunError("image_size: our runs draw at their world's size")
    if dtype not in (None, "fp32"):
        raise RunError(f"dtype {dtype!r}: our runs load in float32 (sample in bf16 with "
                       f"precision='bf16')")
    return load_own_run(run_dir, device)


__all__ = ["CheckpointError", "EvalConfig", "FamilyError", "PRECISIONS", "Parts", "RunConfig",
           "RunError", "TokenizerTrainConfig", "TrainConfig", "WEIGHTS", "build_parts", "has_tokenizers",
           "load_config", "load_own_run", "load_run", "load_tokenizers", "recorded_weights", "resolve_device",
           "save_config", "save_run_weights"]

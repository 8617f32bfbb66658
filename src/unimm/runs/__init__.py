"""Run folders: what a run records and how it is loaded (below the Pipeline, the trainer and
the evaluator, which all read runs through this package).

config.py      RunConfig (composes the sub-configs), TrainConfig, TokenizerTrainConfig,
               EvalConfig, PRECISIONS
folder.py      the folder layout: save/load config.json, weights with their sha256, tokenizers,
               build_parts / load_run -> Parts, resolve_device, RunError
checkpoint.py  safetensors weights and resumable checkpoints, checksums, remove_stale

Training tokenizers for a run is a training step (unimm.train.tokenizer); this package only
loads them.
"""

from .checkpoint import CheckpointError
from .config import PRECISIONS, EvalConfig, RunConfig, TokenizerTrainConfig, TrainConfig
from .folder import (
    WEIGHTS,
    Parts,
    RunError,
    build_parts,
    has_tokenizers,
    load_config,
    load_run,
    load_tokenizers,
    recorded_weights,
    resolve_device,
    save_config,
    save_run_weights,
)

__all__ = ["CheckpointError", "EvalConfig", "PRECISIONS", "Parts", "RunConfig", "RunError",
           "TokenizerTrainConfig", "TrainConfig", "WEIGHTS", "build_parts", "has_tokenizers",
           "load_config", "load_run", "load_tokenizers", "recorded_weights", "resolve_device",
           "save_config", "save_run_weights"]

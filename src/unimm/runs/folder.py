"""A run folder and how its parts are built or loaded (shared by training and Pipeline.load).

    run_dir/
      config.json          the resolved RunConfig (+ vocabulary sizes, the sha256 of
                           model.safetensors, verified on load); reloads the run exactly
      tokenizer/image/     image tokenizer (safetensors + json)
      tokenizer/text/      byte-level BPE (json)
      model.safetensors    weights to serve (EMA weights when EMA is on)
      ckpt/                resumable state: model, EMA, optimizer, step
      metrics.csv, curves.png, eval.json, samples.png
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.unified import TokenModel
from ..paradigms import PARADIGM_CONFIGS, build_paradigm
from ..paradigms.base import Paradigm
from ..paradigms.sequence import Vocab
from ..tokenizers.image import ImageTokenizer, load_image_tokenizer
from ..tokenizers.text import TextTokenizer
from ..utils.config import from_dict, to_dict
from ..utils.io import read_json, write_json
from .checkpoint import find_checkpoint, load_weights, save_weights, weights_sha256
from .config import MODEL_OPTIONS, RunConfig

RUN_FORMAT = "unimm.run"
# 2: the selected paradigm's table only; code_init / image_pos / code_mlp / code_latents in
# [model]. Version 1 folders (every paradigm's table, those options at the top) load through
# `migrate_config`.
RUN_VERSION = 2
WEIGHTS = "model.safetensors"


class RunError(ValueError):
    pass


@dataclass
class Parts:
    cfg: RunConfig
    vocab: Vocab
    text_tok: TextTokenizer
    image_tok: ImageTokenizer
    model: TokenModel
    paradigm: Paradigm
    # a released checkpoint's family (runs/families) or None for our own runs
    family: str | None = None
    # what input images go through before the model reads them (uint8 (H, W, 3) of any size
    # -> the model's input size, as the checkpoint's image processor resizes); None: they
    # must already have the world's size
    prepare: Callable | None = None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("device 'cuda' was asked for but no CUDA GPU is available")
    return torch.device(name)


def load_tokenizers(run_dir: Path) -> tuple[TextTokenizer, ImageTokenizer]:
    """The run's BPE and image tokenizer; RunError when the folder has none (tokenizers are
    trained, or copied, by a training step: unimm.train.tokenizer.prepare_tokenizers)."""
    run_dir = Path(run_dir)
    try:
        text_tok = TextTokenizer.load(run_dir / "tokenizer" / "text")
        image_tok = load_image_tokenizer(run_dir / "tokenizer" / "image")
    except (OSError, ValueError) as e:
        raise RunError(f"{run_dir}: cannot load the tokenizers ({e})") from None
    return text_tok, image_tok


def has_tokenizers(run_dir: Path) -> bool:
    """Whether the run folder holds both tokenizers' files (loading may still fail)."""
    tok = Path(run_dir) / "tokenizer"
    return (tok / "image" / "tokenizer.json").is_file() and \
        (tok / "text" / "text_tokenizer.json").is_file()


def build_parts(cfg: RunConfig, text_tok, image_tok) -> Parts:
    if image_tok.image_size != cfg.data.world.image_size:
        raise RunError(f"the image tokenizer reads {image_tok.image_size}px images but the data "
                       f"is {cfg.data.world.image_size}px")
    vocab = Vocab(text_tok.vocab_size, image_tok.codebook_size, tuple(image_tok.grid))
    mc = cfg.model
    model = TokenModel(vocab.size, mc, code_start=vocab.code_start,
                       image_grid=vocab.grid if mc.image_pos == "learned" else None,
                       code_mlp=mc.code_mlp,
                       code_latents=image_tok.quantizer.codebook if mc.code_latents else None)
    if mc.code_init == "codebook":
        model.init_codes_from(image_tok.quantizer.codebook, vocab.code_start)
    paradigm = build_paradigm(cfg.paradigm, vocab, cfg.paradigm_config)
    paradigm.attach(model, image_tok)
    return Parts(cfg, vocab, text_tok, image_tok, model, paradigm)


def save_config(cfg: RunConfig, vocab: Vocab, run_dir: Path,
                weights: dict[str, str] | None = None) -> None:
    """config.json; `weights`: file name -> sha256 of the run's weights (save_run_weights)."""
    d = {"format": RUN_FORMAT, "version": RUN_VERSION, "config": to_dict(cfg),
         "vocab": {"n_text": vocab.n_text, "n_codes": vocab.n_codes, "grid": list(vocab.grid)}}
    if weights:
        d["weights"] = dict(weights)
    write_json(run_dir / "config.json", d)


def save_run_weights(parts: Parts, model, run_dir: Path) -> None:
    """Write model.safetensors, then record its sha256 in config.json (each file atomically;
    a kill between the two leaves a mismatch that loading reports, and a resumed run mends)."""
    sha = save_weights(model, Path(run_dir) / WEIGHTS)
    save_config(parts.cfg, parts.vocab, Path(run_dir), {WEIGHTS: sha})


def recorded_weights(run_dir: Path) -> dict[str, str]:
    """File name -> sha256 that config.json records ({} for a run saved before runs recorded
    checksums, which loads unverified, or for a folder without a readable config)."""
    try:
        d = read_json(Path(run_dir) / "config.json")
    except ValueError:
        return {}
    w = d.get("weights") if isinstance(d, dict) else None
    return {k: v for k, v in w.items() if isinstance(v, str)} if isinstance(w, dict) else {}


def migrate_config(config: dict, version: int) -> dict:
    """A saved run config (config.json's "config") of an earlier version, as today's: version
    1 kept every paradigm's table (only the selected one was ever used) and the token model's
    options at the top; both move to where RunConfig reads them now. The same model loads."""
    if version >= RUN_VERSION or not isinstance(config, dict):
        return config
    d = dict(config)
    chosen = d.get("paradigm", "ar")
    for name in PARADIGM_CONFIGS:
        if name != chosen:
            d.pop(name, None)
    model = dict(d.get("model") or {})
    for key in MODEL_OPTIONS:
        if key in d:
            model[key] = d.pop(key)
    d["model"] = model
    return d


def load_config(run_dir: Path) -> RunConfig:
    p = Path(run_dir) / "config.json"
    if not p.is_file():
        raise RunError(f"{run_dir} is not a unimm run: no config.json")
    try:
        d = read_json(p)
    except ValueError as e:
        raise RunError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != RUN_FORMAT:
        raise RunError(f"{p} is not a unimm run config (format tag missing)")
    version = d.get("version", 1)
    if not isinstance(version, int) or version > RUN_VERSION:
        raise RunError(f"{p} is a version {version!r} run; this unimm reads versions up to "
                       f"{RUN_VERSION} (a newer unimm wrote it)")
    return from_dict(RunConfig, migrate_config(d["config"], version))


def load_run(run_dir, device="cpu") -> Parts:
    """Rebuild a saved run for inference (weights: model.safetensors, else the checkpoint)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    text_tok, image_tok = load_tokenizers(run_dir)
    parts = build_parts(cfg, text_tok, image_tok)
    w = run_dir / WEIGHTS
    if w.is_file():
        sha = recorded_weights(run_dir).get(WEIGHTS)
    else:
        ck = find_checkpoint(run_dir / "ckpt")
        if ck is None:
            raise RunError(f"{run_dir} has no weights (model.safetensors or ckpt/)")
        w = ck / ("ema.safetensors" if (ck / "ema.safetensors").is_file() else WEIGHTS)
        sha = weights_sha256(ck, w.name)
    load_weights(parts.model, w, sha256=sha)
    parts.model.to(device).eval()
    image_tok.to(device).eval()
    return parts

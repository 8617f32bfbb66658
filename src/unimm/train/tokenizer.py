"""A run's tokenizers, trained (or copied) into its folder before the model trains.

`prepare_tokenizers(cfg, run_dir)` is an explicit step: `unimm train` runs it when the run
folder has no tokenizers; code that builds a `Trainer` itself calls it first.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..data.worlds import make_world
from ..runs import RunConfig, RunError, load_tokenizers
from ..tokenizers.image import ImageTokenizer
from ..tokenizers.text import TextTokenizer
from ..tokenizers.train_image import train_image_tokenizer
from ..utils.config import ConfigError


def _train_image_tokenizer(cfg: RunConfig, out: Path) -> None:
    tc = cfg.image_tokenizer
    if tc.tokenizer.image_size != cfg.data.world.image_size:
        raise ConfigError(f"image_tokenizer.tokenizer.image_size ({tc.tokenizer.image_size}) "
                          f"must equal data.world.image_size ({cfg.data.world.image_size})")
    train_image_tokenizer(tc, out, progress=False, world=make_world(cfg.data))


def prepare_tokenizers(cfg: RunConfig, run_dir: Path) -> tuple[TextTokenizer, ImageTokenizer]:
    """Load the run's tokenizers, training (or copying) them first if the run has none."""
    run_dir = Path(run_dir)
    img_dir, txt_dir = run_dir / "tokenizer" / "image", run_dir / "tokenizer" / "text"
    if cfg.train.init_from and not (img_dir / "tokenizer.json").is_file():
        src = Path(cfg.train.init_from) / "tokenizer"
        if not (src / "image" / "tokenizer.json").is_file() or \
                not (src / "text" / "text_tokenizer.json").is_file():
            raise RunError(f"train.init_from={cfg.train.init_from}: no tokenizers under {src}")
        shutil.copytree(src, run_dir / "tokenizer", dirs_exist_ok=True)
    if not (img_dir / "tokenizer.json").is_file():
        if cfg.image_tokenizer_path:
            src = Path(cfg.image_tokenizer_path)
            if not (src / "tokenizer.json").is_file():
                raise RunError(f"image_tokenizer_path {src} holds no tokenizer.json")
            img_dir.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(src, img_dir, dirs_exist_ok=True)
        else:
            _train_image_tokenizer(cfg, img_dir)
    if not (txt_dir / "text_tokenizer.json").is_file():
        corpus = make_world(cfg.data).text_corpus(cfg.data.text_corpus)
        tok = TextTokenizer.train(corpus, cfg.data.text_vocab_size)
        tok.save(txt_dir)
    return load_tokenizers(run_dir)

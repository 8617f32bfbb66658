"""Helpers shared by tests that train tiny runs."""

from unimm.train.tokenizer import prepare_tokenizers
from unimm.train.trainer import Trainer


def new_trainer(cfg, run_dir, **kw) -> Trainer:
    """The two steps of a run, as `unimm train` takes them: the run folder's tokenizers
    (copied or trained, `prepare_tokenizers`), then a Trainer over them."""
    prepare_tokenizers(cfg, run_dir)
    return Trainer(cfg, run_dir, **kw)

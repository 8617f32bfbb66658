"""Helpers shared by tests that train tiny runs."""

from unimm.train.tokenizer import prepare_tokenizers
from unimm.train.trainer import Trainer


def new_trainer(cfg, run_dir, **kw) -> Trainer:
    """The two steps of a run, as `unimm train` takes them: the run folder's tokenizers
    (copied or trained, `prepare_tokenizers`), then a Trainer over them."""
    prepare_tokenizers(cfg, run_dir)
    return Trainer(cfg, run_dir, **kw)


def cli(*args, capsys=None) -> tuple[int, str, str]:
    """`unimm ARGS` in this process (main(): the one-line errors, exit codes): (status, stdout,
    stderr). In-process saves the ~3 s of a fresh interpreter per call; `capsys` is pytest's."""
    import sys

    import pytest

    from unimm.cli.main import main
    argv, sys.argv = sys.argv, ["unimm", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    out = capsys.readouterr() if capsys is not None else None
    return e.value.code, out.out if out else "", out.err if out else ""

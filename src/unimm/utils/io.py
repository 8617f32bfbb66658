"""Safe file output: every file is written to a temporary sibling and renamed into place, so an
interrupted write never leaves a partial file behind."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


class OutputPathError(ValueError):
    """An output path that cannot be written as a file (say, an existing folder)."""


# Temporary names of atomic writes: `.<name>.<random>.tmp` (files), `.ckpt.<random>` (folders,
# runs/checkpoint.py). A kill between creating and renaming one leaves it behind.
TMP_FILE_GLOB = ".*.tmp"


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to `path`; on success rename it to `path`, else delete it."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{path} is a folder; give a file path to write "
                              f"(e.g. {path / 'out.png'})")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputPathError(f"cannot write {path}: {path.parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 & ~umask)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj, indent: int = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + "\n")


def parse_json(text: str | bytes):
    """json.loads with one error type for every way text can fail to be JSON: ValueError with
    the reason (deep nesting, which json.loads meets as a RecursionError, included)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to read (arrays or objects inside each other "
                         "thousands of levels down)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{e.msg} at line {e.lineno}, column {e.colno}") from None


def read_json(path: str | os.PathLike):
    """The JSON value in a file, or ValueError saying why it cannot be read."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read it ({e.strerror or e})") from None
    return parse_json(raw)

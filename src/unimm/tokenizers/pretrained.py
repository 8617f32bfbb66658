"""The text tokenizer of a released checkpoint (a `tokenizer.json` in the `tokenizers` format,
as Janus-Pro's and Emu3's Hub folders ship it), behind the same interface as `TextTokenizer`.

Notable choices:
- Read with the `tokenizers` library (already a dependency): no transformers, no network, no
  Python code from the checkpoint. `encode` adds no special tokens (the family's prompt format
  places BOS and the rest itself), `decode` drops special tokens, as transformers'
  `batch_decode(..., skip_special_tokens=True)` does for answers.
- Special tokens by role (bos, eos, pad, image_token, boi_token, eoi_token, ...) come from
  `tokenizer_config.json`, then `special_tokens_map.json` (the original DeepSeek layout), as
  strings resolved to ids through the vocabulary; `special(role)` raises a clear error for a
  role the checkpoint does not define.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer

from ..utils.io import read_json
from .text import TextTokenizerError

FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
ROLES = ("bos", "eos", "pad", "unk")


def _token_text(v) -> str | None:
    """A special token as written in tokenizer configs: a string or {"content": ...}."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), str):
        return v["content"]
    return None


class PretrainedTextTokenizer:
    """`encode(str) -> list[int]` (no specials added), `decode(ids) -> str` (specials dropped),
    `vocab_size`, and the checkpoint's special tokens by role (`special("bos")`)."""

    def __init__(self, tokenizer: Tokenizer, specials: dict[str, str], folder: Path | None = None):
        self._tok = tokenizer
        self.folder = folder
        self.specials = {}
        for role, text in specials.items():
            i = tokenizer.token_to_id(text)
            if i is not None:
                self.specials[role] = i

    @classmethod
    def load(cls, folder: str | Path) -> "PretrainedTextTokenizer":
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TextTokenizerError(f"{folder}: no tokenizer.json (a released checkpoint's "
                                     f"folder holds its tokenizer there)")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:   # noqa: BLE001 - the tokenizers library raises plain Exception
            raise TextTokenizerError(f"{path}: not a tokenizers JSON file ({e})") from None
        specials: dict[str, str] = {}
        for name in ("special_tokens_map.json", "tokenizer_config.json"):   # later wins
            p = folder / name
            if not p.is_file():
                continue
            try:
                d = read_json(p)
            except ValueError as e:
                raise TextTokenizerError(f"{p}: {e}") from None
            if not isinstance(d, dict):
                continue
            extra = d.get("extra_special_tokens")
            for key, v in list(d.items()) + (list(extra.items()) if isinstance(extra, dict)
                                             else []):
                text = _token_text(v)
                if text is None:
                    continue
                role = key[:-6] if key.endswith("_token") else None
                if role:
                    specials[role] = text
        return cls(tok, specials, folder)

    # -- use -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def special(self, role: str) -> int:
        if role not in self.specials:
            raise TextTokenizerError(f"this checkpoint's tokenizer defines no {role} token "
                                     f"(it defines: {', '.join(sorted(self.specials))})")
        return self.specials[role]

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TextTokenizerError(f"text is not valid unicode (it holds a lone surrogate at "
                                     f"position {e.start}); cannot tokenize it") from None
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TextTokenizerError(f"token ids must lie in [0, {self.vocab_size}); got {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=True)

    def save(self, directory: str | Path) -> Path:
        """Copy the checkpoint's tokenizer files into `directory`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name in FILES:
            if self.folder is not None and (self.folder / name).is_file():
                shutil.copy(self.folder / name, d / name)
        if not (d / "tokenizer.json").is_file():
            (d / "tokenizer.json").write_text(self._tok.to_str(), encoding="utf-8")
        return d


__all__ = ["PretrainedTextTokenizer"]

"""Text tokenizer: byte-level BPE (GPT-2 style) trained with the `tokenizers` library.

Notable choices:
- Byte-level: the ByteLevel pre-tokenizer maps every UTF-8 byte to one of 256 base symbols, all
  of which are in the vocabulary (`initial_alphabet`), so any string encodes (no unknown token)
  and the ByteLevel decoder returns it exactly: unicode, unseen words, whitespace runs, "".
  `add_prefix_space=False` and no normaliser, so nothing is added or changed on the way.
- No special tokens: ids are exactly [0, vocab_size). The model appends its own ranges (BOS,
  image codes, ...) above vocab_size, so nothing here can collide with them.
- Trained on the run's own language (unimm.data.world.text_corpus: every prompt, question,
  answer, caption and instruction of the training tasks). That language saturates at ~510 tokens (every word becomes one token; BPE
  merges never cross word boundaries), so the default vocab_size is 512: a larger request
  yields the same ~510 tokens. Captions average ~18 tokens (~80 characters).
- Saved as `text_tokenizer.json` (the `tokenizers` JSON format: data, not pickle).

Strings holding lone surrogates (e.g. "\\ud800") are not valid text and cannot be UTF-8
encoded; `encode` rejects them with a ValueError.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..utils.io import atomic_path

TEXT_FILE = "text_tokenizer.json"


class TextTokenizerError(ValueError):
    """A saved text tokenizer cannot be loaded, or input text cannot be tokenized."""


class TextTokenizer:
    """Byte-level BPE: `encode(str) -> list[int]`, `decode(ids) -> str`, exact round trip."""

    def __init__(self, tokenizer: Tokenizer):
        self._tok = tokenizer

    # -- building ------------------------------------------------------------------------------
    @staticmethod
    def _blank() -> Tokenizer:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 512) -> "TextTokenizer":
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be >= 256 (the byte alphabet), got {vocab_size}")
        tok = cls._blank()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[], show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    # -- use -----------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise TextTokenizerError(f"text is not valid unicode (it holds a lone surrogate at "
                                     f"position {e.start}); cannot tokenize it") from None
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise TextTokenizerError(f"token ids must lie in [0, {self.vocab_size}); got {bad[:5]}")
        return self._tok.decode(ids, skip_special_tokens=False)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)

    # -- files ---------------------------------------------------------------------------------
    def save(self, directory) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        with atomic_path(d / TEXT_FILE) as tmp:
            Path(tmp).write_text(self._tok.to_str(pretty=False), encoding="utf-8")
        return d / TEXT_FILE

    @classmethod
    def load(cls, directory) -> "TextTokenizer":
        """Load `text_tokenizer.json` from a folder (or the file itself); checks that it is a
        byte-level BPE whose ids are [0, vocab_size)."""
        p = Path(directory)
        if p.is_dir():
            p = p / TEXT_FILE
        if not p.is_file():
            raise TextTokenizerError(f"{p}: missing (a saved text tokenizer is {TEXT_FILE})")
        try:
            raw = p.read_text(encoding="utf-8")
            spec = json.loads(raw)
            tok = Tokenizer.from_str(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, Exception) as e:
            raise TextTokenizerError(f"{p}: not a valid tokenizers JSON file "
                                     f"({type(e).__name__}: {e})") from None
        model = (spec.get("model") or {}).get("type")
        pre = (spec.get("pre_tokenizer") or {}).get("type")
        dec = (spec.get("decoder") or {}).get("type")
        if (model, pre, dec) != ("BPE", "ByteLevel", "ByteLevel"):
            raise TextTokenizerError(f"{p}: expected a byte-level BPE (model BPE, ByteLevel "
                                     f"pre-tokenizer and decoder), got model={model}, "
                                     f"pre_tokenizer={pre}, decoder={dec}")
        vocab = tok.get_vocab()
        if sorted(vocab.values()) != list(range(len(vocab))):
            raise TextTokenizerError(f"{p}: token ids are not contiguous from 0")
        missing = set(pre_tokenizers.ByteLevel.alphabet()) - set(vocab)
        if missing:
            raise TextTokenizerError(f"{p}: {len(missing)} of the 256 byte symbols are missing, "
                                     "so some text could not be encoded")
        return cls(tok)

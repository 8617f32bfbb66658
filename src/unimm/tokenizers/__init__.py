"""Tokenizers: images <-> discrete codes (learned vector quantisers) and text <-> ids (BPE).

- image.py        the `ImageTokenizer` contract, `PatchVQ` (CPU default), `ConvVQ`, save/load
- vq.py           EMA vector quantiser: k-means++ init, dead-code restarts, usage/perplexity
- text.py         byte-level BPE `TextTokenizer` trained on a world's language

No training code: the image tokenizer trains in unimm.train.tokenizer.
"""

from .image import (IMAGE_TOKENIZERS, ConvVQ, ImageTokenizer, ImageTokenizerConfig, PatchVQ,
                    TokenizerFileError, build_image_tokenizer, load_image_tokenizer)
from .text import TextTokenizer, TextTokenizerError

__all__ = ["IMAGE_TOKENIZERS", "ConvVQ", "ImageTokenizer", "ImageTokenizerConfig", "PatchVQ",
           "TokenizerFileError", "build_image_tokenizer", "load_image_tokenizer",
           "TextTokenizer", "TextTokenizerError"]

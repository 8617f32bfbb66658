"""Tokenizers: images <-> discrete codes (learned vector quantisers) and text <-> ids (BPE).

- image.py        the `ImageTokenizer` contract, `PatchVQ` (CPU default), `ConvVQ`, save/load
- vq.py           EMA vector quantiser: k-means++ init, dead-code restarts, usage/perplexity
- train_image.py  `train_image_tokenizer(cfg, out_dir)` on streamed ShapesWorld renders
- text.py         byte-level BPE `TextTokenizer` trained on ShapesWorld language
"""

from .image import (IMAGE_TOKENIZERS, ConvVQ, ImageTokenizer, ImageTokenizerConfig, PatchVQ,
                    TokenizerFileError, build_image_tokenizer, load_image_tokenizer)
from .text import TextTokenizer, TextTokenizerError

__all__ = ["IMAGE_TOKENIZERS", "ConvVQ", "ImageTokenizer", "ImageTokenizerConfig", "PatchVQ",
           "TokenizerFileError", "build_image_tokenizer", "load_image_tokenizer",
           "TextTokenizer", "TextTokenizerError"]

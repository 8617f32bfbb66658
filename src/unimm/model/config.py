"""The run's `[model]` table: the backbone's shape and how image codes enter and leave the
token model (model/unified.py).

`ModelConfig` extends `BackboneConfig` with the token model's options, so the backbone reads
its own fields from it and the table stays flat (`[model] dim = 192`, `image_pos = "learned"`).
Runs saved before these options moved here kept them at the top of the run config; loading
migrates them (runs/folder.py), and `--set code_mlp=8` style keys are read as `model.code_mlp`
with a warning (RunConfig.MOVED).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from .backbone import BackboneConfig


@dataclass(frozen=True)
class ModelConfig(BackboneConfig):
    # Initial embeddings of image codes: independent random vectors, or a random projection of
    # the tokenizer's codebook (similar patches start similar; see TokenModel.init_codes_from).
    code_init: Literal["random", "codebook"] = "random"
    # Learned absolute (row, col) embeddings added to image-code inputs (TokenModel docs).
    image_pos: Literal["none", "learned"] = "none"
    # > 0: Janus-style image-code input/output MLPs with this code-embedding width instead of
    # rows of the shared table and head (model/unified.py CodeMLP; needed for the Janus format).
    code_mlp: int = 0
    # Image codes also read in and scored out through the tokenizer's frozen codebook vectors
    # (zero-initialised linear maps beside the table; model/unified.py), so codes for similar
    # patches share what is learned about them. Can be switched on when continuing a run.
    code_latents: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.code_mlp < 0:
            raise ValueError(f"code_mlp must be >= 0 (0 = off), got {self.code_mlp}")
        if self.code_mlp and self.code_init == "codebook":
            raise ValueError("code_init = 'codebook' initialises rows of the shared table; "
                             "with code_mlp > 0 codes have their own embedding (use 'random')")
        if self.code_mlp and self.code_latents:
            raise ValueError("code_latents and code_mlp are two ways to embed codes; pick one")

    @property
    def backbone(self) -> BackboneConfig:
        """The backbone's own fields: the shape a warm start must share."""
        return BackboneConfig(**{f.name: getattr(self, f.name)
                                 for f in dataclasses.fields(BackboneConfig)})

    @classmethod
    def of(cls, cfg: BackboneConfig) -> "ModelConfig":
        """A backbone shape with the token model's default options (or `cfg` itself)."""
        if isinstance(cfg, cls):
            return cfg
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(BackboneConfig)})

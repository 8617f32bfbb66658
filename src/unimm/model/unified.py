"""The unified token model: embeddings in, the shared backbone, a vocabulary head out.

Einops legend: B batch, T new tokens, S keys (cache length), D width, V vocabulary slice.

Notable choices:
- The head can be evaluated on a vocabulary *slice* (`logits(h, lo, hi)`): image decoding
  only ever needs the code range and text decoding the text range, so we never compute (or keep)
  full-vocabulary logits for a position that samples from a slice.
- Untied input/output embeddings (the code and text ranges play different roles in and out).
- Optional learned absolute (row, col) embeddings added to image-code inputs (`image_grid`):
  rotary positions only ever give *relative* offsets in attention scores, and a VQ code of a
  4x4 patch carries no position in its value, so "where is the red circle?" would otherwise
  have to be inferred from the offset to a text query whose own index varies with the
  question's length. Zero-initialised, so enabling it on a trained model changes nothing at
  first.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .backbone import Backbone, BackboneConfig


class TokenModel(nn.Module):
    def __init__(self, vocab_size: int, cfg: BackboneConfig,
                 image_grid: tuple[int, int] | None = None, code_start: int = 0):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.dim)
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        self.extras = nn.ModuleDict()     # a paradigm's own modules (Paradigm.attach)
        # created last so that enabling it leaves every other initial weight unchanged
        self.image_grid, self.code_start = image_grid, code_start
        self.image_pos = None
        if image_grid is not None:
            self.image_pos = nn.Embedding(image_grid[0] * image_grid[1], cfg.dim)
            nn.init.zeros_(self.image_pos.weight)

    @torch.no_grad()
    def init_codes_from(self, codebook: Tensor, start: int, std: float = 0.02) -> None:
        """Initialise the embedding and head rows of image codes [start, start + K) as one random
        projection of the tokenizer's codebook vectors (K, d): codes for similar patches start
        with similar embeddings, instead of K unrelated random vectors each seen rarely (the
        role of Janus's aligner over VQ embeddings, here as an initialisation only)."""
        cb = codebook.float()
        cb = cb / cb.norm(dim=1, keepdim=True).clamp_min(1e-6)              # (K, d) unit rows
        proj = torch.randn(cb.shape[1], self.cfg.dim, device=cb.device) * std  # (d, D)
        rows = (cb @ proj).to(self.embed.weight.dtype)                         # (K, D), std ~ std
        k = rows.shape[0]
        self.embed.weight[start:start + k] = rows
        self.head.weight[start:start + k] = rows

    def hidden(self, tokens: Tensor, pos: Tensor, mask: Tensor | None = None,
               cache=None, start: int = 0) -> Tensor:
        """(B, T) tokens -> (B, T, D) final hidden states (after the final norm)."""
        return self.backbone(self.embed_tokens(tokens, pos), pos, mask, cache=cache, start=start)

    def embed_tokens(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """(B, T) tokens, (B, T, 3) positions -> (B, T, D) input embeddings."""
        x = self.embed(tokens)
        if self.image_pos is not None:
            is_code = (tokens >= self.code_start)[..., None]                 # (B, T, 1)
            x = x + self.cell_embedding(pos) * is_code
        return x

    def cell_embedding(self, pos: Tensor) -> Tensor:
        """(..., 3) positions -> (..., D) learned embedding of each (row, col) image cell
        (meaningful for image positions only; text positions are clamped into the grid)."""
        h, w = self.image_grid
        return self.image_pos((pos[..., 1] * w + pos[..., 2]).clamp(0, h * w - 1))

    def logits(self, h: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """(..., D) -> (..., hi - lo): the head restricted to vocabulary rows [lo, hi)."""
        return h @ self.head.weight[lo:hi].T

    def forward(self, tokens: Tensor, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.logits(self.hidden(tokens, pos, mask))

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None):
        return self.backbone.new_cache(batch, max_len, dtype=dtype, device=device)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

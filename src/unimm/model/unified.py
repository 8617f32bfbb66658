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
- Optional Janus-style code input/output (`code_mlp`, Janus arXiv:2410.13848 and transformers'
  `JanusModel.generation_*`): image codes get their own small embedding table followed by a
  two-layer GELU aligner into the model width, and their logits come from a two-layer GELU head,
  instead of rows of the shared table and head. Text and special tokens keep the plain table
  and head. With 1-D rotary positions this is exactly transformers' Janus layout, so weights
  convert both ways (unimm.interop.janus).
- Optional codebook features (`code_latents`, the tokenizer's frozen codebook vectors (K, d)):
  a code's input embedding gains Linear(d, D)(z_c) and its logit gains (Linear(D, d)(h)) . z_c.
  A plain table learns each of K codes from that code's own (rare) occurrences; in the shipped
  model a linear probe reads a code's colour from its codebook vector 0.997 of the time but
  from its learned head row only 0.41, so what the model learns about one red fragment is not
  shared with the other red fragments. Both maps are zero-initialised, so switching them on
  when continuing a run changes nothing at first.
- One seam for a speed path: `decoder`, a compiled one-token decoding step that
  `decode_logits` hands its steps to (None: the eager backbone). `compile_decode` sets it (and
  the backbone's `filler`) from unimm.fast.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ops
from .backbone import Backbone, BackboneConfig


class Decoder(Protocol):
    """A decoding step that replaces the eager one (`TokenModel.decoder`; unimm.fast's
    `DecodeStep`): called with `decode_logits`' arguments, it returns what that returns and
    leaves the cache as the eager step would (written at `start`, length start + 1)."""

    def __call__(self, tok: Tensor, pos: Tensor, slots: Tensor, cache, start: int, lo: int,
                 hi: int) -> Tensor: ...

    def capacity(self, max_len: int) -> int:
        """The cache capacity to make for `max_len` slots (it may want fewer shapes)."""


class CodeMLP(nn.Module):
    """Janus's image-code input and output: Embedding(K, e) -> Linear(e, D) -> GELU ->
    Linear(D, D) in, Linear(D, D) -> GELU -> Linear(D, K) out (biases, exact GELU)."""

    def __init__(self, n_codes: int, dim: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(n_codes, embed_dim)
        self.align_in, self.align_out = nn.Linear(embed_dim, dim), nn.Linear(dim, dim)
        self.head_in, self.head_out = nn.Linear(dim, dim), nn.Linear(dim, n_codes)
        for m in (self.align_in, self.align_out, self.head_in, self.head_out):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed.weight, std=1.0)

    def embed_codes(self, codes: Tensor) -> Tensor:
        """(...,) codes in [0, K) -> (..., D)."""
        return self.align_out(F.gelu(self.align_in(self.embed(codes))))

    def logits(self, h: Tensor) -> Tensor:
        """(..., D) -> (..., K)."""
        return self.head_out(F.gelu(self.head_in(h)))


class TokenModel(nn.Module):
    def __init__(self, vocab_size: int, cfg: BackboneConfig,
                 image_grid: tuple[int, int] | None = None, code_start: int = 0,
                 code_mlp: int = 0, code_latents: Tensor | None = None):
        """`code_mlp` > 0: Janus-style code input/output (CodeMLP) with that code embedding
        width for the codes [code_start, vocab_size); the plain table and head then cover
        only [0, code_start). `code_latents` (K, d): codebook vectors of the K codes, read in
        and out through zero-initialised linear maps besides the table (see the module notes)."""
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        rows = code_start if code_mlp else vocab_size
        self.embed = nn.Embedding(rows, cfg.dim)
        self.backbone = Backbone(cfg)
        self.head = nn.Linear(cfg.dim, rows, bias=False)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)
        self.extras = nn.ModuleDict()     # a paradigm's own modules (Paradigm.attach)
        self.decoder: Decoder | None = None   # seam: a compiled decoding step (compile_decode)
        # created last so that enabling it leaves every other initial weight unchanged
        self.image_grid, self.code_start = image_grid, code_start
        self.image_pos = None
        if image_grid is not None:
            self.image_pos = nn.Embedding(image_grid[0] * image_grid[1], cfg.dim)
            nn.init.zeros_(self.image_pos.weight)
        self.codes = None
        if code_mlp:
            if not 0 < code_start < vocab_size:
                raise ValueError(f"code_mlp needs codes after the text: code_start={code_start}, "
                                 f"vocab_size={vocab_size}")
            self.codes = CodeMLP(vocab_size - code_start, cfg.dim, code_mlp)
        self.latent_in = self.latent_out = None
        if code_latents is not None:
            k = vocab_size - code_start
            if code_latents.ndim != 2 or code_latents.shape[0] != k or not 0 < code_start:
                raise ValueError(f"code_latents must be ({k}, d) for the codes after the text, "
                                 f"got {tuple(code_latents.shape)} with code_start={code_start}")
            if code_mlp:
                raise ValueError("code_latents and code_mlp are two ways to embed codes; pick one")
            z = code_latents.detach().float()
            self.register_buffer("code_latents", z / z.norm(dim=1, keepdim=True).clamp_min(1e-6))
            self.latent_in = nn.Linear(z.shape[1], cfg.dim, bias=False)
            self.latent_out = nn.Linear(cfg.dim, z.shape[1], bias=False)
            nn.init.zeros_(self.latent_in.weight)
            nn.init.zeros_(self.latent_out.weight)

    @torch.no_grad()
    def init_codes_from(self, codebook: Tensor, start: int, std: float = 0.02) -> None:
        """Initialise the embedding and head rows of image codes [start, start + K) as one random
        projection of the tokenizer's codebook vectors (K, d): codes for similar patches start
        with similar embeddings, instead of K unrelated random vectors each seen rarely (the
        role of Janus's aligner over VQ embeddings, here as an initialisation only)."""
        if self.codes is not None:
            raise ValueError("code_init = 'codebook' initialises rows of the shared table; "
                             "a model with Janus-style code MLPs (code_mlp) has none")
        cb = codebook.float()
        cb = cb / cb.norm(dim=1, keepdim=True).clamp_min(1e-6)              # (K, d) unit rows
        proj = torch.randn(cb.shape[1], self.cfg.dim, device=cb.device) * std  # (d, D)
        rows = (cb @ proj).to(self.embed.weight.dtype)                         # (K, D), std ~ std
        k = rows.shape[0]
        self.embed.weight[start:start + k] = rows
        self.head.weight[start:start + k] = rows

    def hidden(self, tokens: Tensor, pos: Tensor, mask: Tensor | None = None,
               cache=None, start: int = 0, last: bool = False) -> Tensor:
        """(B, T) tokens -> (B, T, D) final hidden states (after the final norm); (B, 1, D) of
        the last token with `last` (Backbone.forward)."""
        # a module call on purpose: the backbone is the hook point benches count forwards with
        return self.backbone(self.embed_tokens(tokens, pos), pos, mask, cache=cache, start=start,
                             last=last)

    def embed_tokens(self, tokens: Tensor, pos: Tensor, dense: bool = False) -> Tensor:
        """(B, T) tokens, (B, T, 3) positions -> (B, T, D) input embeddings. `dense`: with code
        MLPs, run the MLP over every token and keep its rows where the token is a code (no
        data-dependent branch, for compiled steps; the same values)."""
        is_code = tokens >= self.code_start                                  # (B, T)
        if self.codes is None:
            x = self.embed(tokens)
        else:
            x = self.embed(tokens.clamp(max=self.code_start - 1))
            if dense:
                mlp = self.codes.embed_codes((tokens - self.code_start).clamp(min=0))
                x = torch.where(is_code[..., None], mlp.to(x.dtype), x)
            elif bool(is_code.any()):
                x = x.index_put((is_code,), self.codes.embed_codes(
                    tokens[is_code] - self.code_start).to(x.dtype))
        if self.latent_in is not None:
            z = self.code_latents[(tokens - self.code_start).clamp(min=0)]      # (B, T, d)
            x = x + self.latent_in(z.to(x.dtype)) * is_code[..., None]
        if self.image_pos is not None:
            x = x + self.cell_embedding(pos) * is_code[..., None]
        return x

    def cell_embedding(self, pos: Tensor) -> Tensor:
        """(..., 3) positions -> (..., D) learned embedding of each (row, col) image cell
        (meaningful for image positions only; text positions are clamped into the grid)."""
        h, w = self.image_grid
        return self.image_pos((pos[..., 1] * w + pos[..., 2]).clamp(0, h * w - 1))

    def logits(self, h: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        """(..., D) -> (..., hi - lo): the head restricted to vocabulary rows [lo, hi)."""
        if self.codes is None and self.latent_out is None:
            return h @ self.head.weight[lo:hi].T
        cs, hi = self.code_start, self.vocab_size if hi is None else hi
        parts = []
        if lo < cs:
            parts.append(h @ self.head.weight[lo:min(hi, cs)].T)
        if hi > cs:
            parts.append(self._code_logits(h, max(lo, cs) - cs, hi - cs))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def _code_logits(self, h: Tensor, lo: int, hi: int) -> Tensor:
        """(..., D) -> (..., hi - lo): logits of image codes [lo, hi) (code indices, not
        vocabulary ids) when codes have their own input/output (code_mlp or code_latents)."""
        if self.codes is not None:
            return self.codes.logits(h)[..., lo:hi]
        cs = self.code_start
        z = self.code_latents[lo:hi].to(h.dtype)                            # (V', d)
        return h @ self.head.weight[cs + lo:cs + hi].T + self.latent_out(h) @ z.T

    def forward(self, tokens: Tensor, pos: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.logits(self.hidden(tokens, pos, mask))

    def compile_decode(self, on: bool = True, backend: str = "aoti") -> None:
        """Run `decode_logits` through a compiled fixed-shape step, and prompt fills through a
        compiled fill, from unimm.fast (`unimm.fast.compile_decode`: backends, what is compiled
        when); on=False: eagerly again. Without the fast package (UNIMM_FAST=0, or not
        installed) a warning, and decoding stays eager: the same outputs, more slowly."""
        if not on:
            self.decoder = self.backbone.filler = None
        elif ops.require_fast("compiled decoding") is not None:
            ops.fast.compile_decode(self, backend)

    def decode_logits(self, tok: Tensor, pos: Tensor, slots: Tensor, cache, start: int,
                      lo: int, hi: int) -> Tensor:
        """One decoding step: feed one new token per row at cache slot `start` and return the
        float32 logits (R, hi - lo) of vocabulary rows [lo, hi) for the token after it.
        tok (R, 1), pos (R, 1, 3); `slots` Bool (R, cache.max_len): the cache slots each row
        may attend to once written (`decode_slots`)."""
        if self.decoder is not None:
            return self.decoder(tok, pos, slots, cache, start, lo, hi)
        mask = slots[:, None, None, :start + 1]                               # (R, 1, 1, s)
        h = self.hidden(tok, pos, mask, cache=cache, start=start, last=True)[:, -1]
        return self.logits(h, lo, hi).float()

    @staticmethod
    def decode_slots(valid: Tensor, cache) -> Tensor:
        """Bool (R, cache.max_len) for `decode_logits`: a left-padded prefix's real tokens
        (`valid`, (R, T)), then every slot after the prefix (the tokens generated)."""
        R, T = valid.shape
        return torch.cat([valid, valid.new_ones(R, cache.max_len - T)], dim=1)

    def new_cache(self, batch: int, max_len: int, dtype=None, device=None, reuse: bool = False):
        """`Backbone.new_cache`; `reuse`: memory from (and back to) the backbone's pool."""
        if self.decoder is not None:
            max_len = self.decoder.capacity(max_len)
        return self.backbone.new_cache(batch, max_len, dtype=dtype, device=device, reuse=reuse)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

"""Autoregressive text + rectified flow on continuous image latents in one transformer
(Transfusion, arXiv:2408.11039; JanusFlow, arXiv:2411.07975).

Text is next-token prediction as in every paradigm. Image positions carry continuous latents
instead of code embeddings: the generated image is noised along the straight path
x_t = t x1 + (1 - t) x0 (x0 ~ N(0, I), t = 1 is data) and the hidden state at each of its
positions predicts the velocity v = x1 - x0 through a small output projection (rectified flow,
Liu et al. arXiv:2209.03003). Sampling integrates dx/dt = v from noise (ode.py).

Notable choices:
- Latent space: the image tokenizer's codebook vectors of the codes, x1 = codebook[codes],
  scaled to unit per-element RMS (`FlowHead.scale`; the l2 PatchVQ's unit vectors have RMS
  1/sqrt(d), far below the N(0, I) noise; the role of Stable Diffusion's latent scale factor).
  The layout, the data pipeline and the tokenizer stay those of the token paradigms, and an
  image is never encoded twice.
- Everything the paradigm adds lives in one module, `model.extras["flow"]`: a frozen copy of
  the codebook (persistent buffer, saved with the weights), the input projection d -> D, the
  zero-initialised output projection D -> d (the untrained model predicts v = 0, DiT's
  zero-init), and a DiT-style timestep embedding (sinusoidal + MLP). Save/load and warm starts
  need nothing new.
- Input images (understanding, an edit's source) enter as clean latents with the embedding of
  t = 1, the time at which a generated image is clean: to the network a source image looks like
  a finished target. With `input_images = "codes"` they enter as their code embeddings
  instead (understanding and generation then read images differently, as in JanusFlow), which
  is what an `ar` warm start has learned to read.
- Output: `predict = "velocity"` reads the velocity off out_proj at each latent's own position;
  `predict = "codes"` estimates the clean latent as the posterior mean over the codebook from
  the token head's code logits at the position before it (the AR alignment) and derives the
  velocity from it, so an `ar` warm start begins with a head that already knows which code
  comes next. Either way the loss is the velocity MSE and sampling integrates the velocity.
  The code rows of the token embedding and head are used only by these two options.
- Attention: causal, bidirectional inside every image span (target and input), padding removed
  (`masks.span_mask`). Input images are bidirectional too so that every patch of a source image
  sees the whole image, as the target span does; the same mask is used when answering
  (`prefix_attention`), exactly as in training.
- Loss: text CE on the assistant's non-code tokens (answers, <boi>/<eoi>/<eos>) over the text
  slice of the head, plus `image_loss_weight` x velocity MSE on the target latents. t is
  logit-normal (SD3, arXiv:2403.03206) or uniform, one t per image; all noise comes from the
  trainer's generator, so resume is exact.
- Sampling: conditional and unconditional rows in one forward (2B rows); the prefix (everything
  up to <boi>) is computed once into the KV cache, and each ODE step rewrites only the N image
  slots at start = T. `SamplingConfig.temperature` scales the initial noise (0 = start from the
  prior's mean, deterministic; top_k / top_p do not apply).
- Decoding: latents are snapped to the nearest code before the tokenizer's decoder
  (`decode="nearest_code"`): the decoder was trained on code vectors only, so an off-manifold
  latent from a few Euler steps decodes to a blend of patches, while the nearest code decodes
  to a clean patch. Measured on the default 32x32 tokenizer (1536 codes, d = 16), with
  Gaussian latent noise of 10-30 % of a code's norm: mean absolute pixel error against the
  clean decode 0.02-0.05 (of 255) snapped vs 1.4-4.4 continuous (renormalised or not); a test
  checks the same ordering on the tiny tokenizer. `decode="continuous"` is kept for
  tokenizers whose decoder was trained on continuous latents.

Einops legend: B images, R rows (2B with guidance), T prefix / sequence, N latents per image,
M target latents in a batch, C image positions in a batch, K codebook size, d latent dim,
D model width, F timestep frequencies.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from ..model.unified import TokenModel
from ..utils.config import check_limits
from . import ode
from .base import Paradigm, Turn, drop_condition, format_turn, reduce_loss
from .sampling import SamplingConfig, guide
from .sequence import Batch, Packed, Vocab, collate, image_positions


@dataclass(frozen=True)
class FlowConfig:
    cfg_dropout: float = 0.1          # probability of dropping the text condition of t2i / edit
    steps: int = 10                   # ODE steps per image
    sampler: ode.Method = "euler"     # heun costs 2 evaluations per step
    t_sampling: Literal["logit_normal", "uniform"] = "logit_normal"
    t_mean: float = 0.0               # logit-normal: t = sigmoid(t_mean + t_std * N(0, 1))
    t_std: float = 1.0
    image_loss_weight: float = 1.0    # weight of the velocity MSE against the text CE
    loss_reduction: Literal["token", "sequence"] = "token"   # see ARConfig
    decode: Literal["nearest_code", "continuous"] = "nearest_code"
    # How input images (understanding, an edit's source) are read: "latents" = clean latents
    # at t = 1 through the flow's input projection (Transfusion: one representation for both);
    # "codes" = their VQ codes through the token embedding (JanusFlow keeps understanding's
    # input apart from generation's; here it is the code table an `ar` warm start already reads).
    input_images: Literal["latents", "codes"] = "latents"
    # What the network outputs at a generated latent: "velocity" = out_proj(h) at its own
    # position; "codes" = the clean latent as the posterior mean over the codebook,
    # x1_hat = softmax(code logits) @ codebook, read from the position before it (the AR
    # alignment, as masked.shift), and v = (x1_hat - x_t) / (1 - t). Data lie on the codebook,
    # so that mean is the exact form of the optimal denoiser (CDCD, arXiv:2211.15089); the loss
    # stays the velocity MSE (x-prediction with a v-loss, JiT arXiv:2511.13720).
    predict: Literal["velocity", "codes"] = "velocity"
    min_gap: float = 0.05             # predict = codes: 1 - t is clamped here (JiT's t_eps)

    # Accepted ranges of the size fields, checked before anything is allocated.
    LIMITS: ClassVar[dict] = {"steps": (1, 10000)}

    def __post_init__(self):
        check_limits(self, self.LIMITS)
        if not 0 <= self.cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must lie in [0, 1), got {self.cfg_dropout}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.sampler not in ode.METHODS:
            raise ValueError(f"sampler must be one of {', '.join(ode.METHODS)}, "
                             f"got {self.sampler!r}")
        if self.t_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"t_sampling must be 'logit_normal' or 'uniform', "
                             f"got {self.t_sampling!r}")
        if self.t_std <= 0:
            raise ValueError(f"t_std must be > 0, got {self.t_std}")
        if self.image_loss_weight < 0:
            raise ValueError(f"image_loss_weight must be >= 0, got {self.image_loss_weight}")
        if self.loss_reduction not in ("token", "sequence"):
            raise ValueError(f"loss_reduction must be 'token' or 'sequence', "
                             f"got {self.loss_reduction!r}")
        if self.decode not in ("nearest_code", "continuous"):
            raise ValueError(f"decode must be 'nearest_code' or 'continuous', "
                             f"got {self.decode!r}")
        if self.input_images not in ("latents", "codes"):
            raise ValueError(f"input_images must be 'latents' or 'codes', "
                             f"got {self.input_images!r}")
        if self.predict not in ("velocity", "codes"):
            raise ValueError(f"predict must be 'velocity' or 'codes', got {self.predict!r}")
        if not 0 < self.min_gap < 1:
            raise ValueError(f"min_gap must lie in (0, 1), got {self.min_gap}")


class TimeEmbedding(nn.Module):
    """t in [0, 1] -> (..., D): sinusoidal features of 1000 t, then Linear-SiLU-Linear (DiT's
    TimestepEmbedder, Peebles & Xie arXiv:2212.09748)."""

    def __init__(self, dim: int, n_freq: int = 64):
        super().__init__()
        half = n_freq // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * torch.arange(half) / half),
                             persistent=False)                               # (F/2,)
        self.mlp = nn.Sequential(nn.Linear(n_freq, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        a = 1000.0 * t.float()[..., None] * self.freqs                      # (..., F/2)
        return self.mlp(torch.cat([a.cos(), a.sin()], dim=-1))              # (..., D)


class FlowHead(nn.Module):
    """The flow paradigm's own modules (model.extras["flow"]): codebook latents in, velocity out."""

    def __init__(self, codebook: Tensor, dim: int):
        super().__init__()
        cb = codebook.detach().float().clone()                               # (K, d)
        self.register_buffer("codebook", cb)                                 # frozen, saved
        self.register_buffer("scale", cb.pow(2).mean().rsqrt().clamp(max=1e6))   # unit RMS
        d = cb.shape[1]
        self.in_proj = nn.Linear(d, dim)
        self.out_proj = nn.Linear(dim, d)
        self.time = TimeEmbedding(dim)
        for m in self.modules():                 # the backbone's N(0, 0.02), zero biases
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.out_proj.weight)     # predicts v = 0 until trained (DiT)

    @property
    def latent_dim(self) -> int:
        return self.codebook.shape[1]

    def latents(self, codes: Tensor) -> Tensor:
        """(...) code indices -> (...) x d scaled latents (the flow's data space)."""
        return F.embedding(codes, self.codebook) * self.scale

    def embed(self, z: Tensor, t: Tensor) -> Tensor:
        """(C, d) latents at times (C,) -> (C, D) input embeddings."""
        return self.in_proj(z) + self.time(t)


class Flow(Paradigm):
    name = "flow"
    bidirectional_images = True

    def __init__(self, vocab: Vocab, cfg: FlowConfig | None = None):
        super().__init__(vocab)
        self.cfg = cfg or FlowConfig()

    # ---- construction -------------------------------------------------------------------------
    def attach(self, model: TokenModel, image_tok) -> None:
        cb = image_tok.quantizer.codebook
        if cb.shape[0] != self.vocab.n_codes:
            raise ValueError(f"the image tokenizer has {cb.shape[0]} codes but the vocabulary "
                             f"{self.vocab.n_codes}")
        model.extras["flow"] = FlowHead(cb, model.cfg.dim)

    @staticmethod
    def head(model: TokenModel) -> FlowHead:
        if "flow" not in model.extras:
            raise ValueError("this model has no flow modules: build it with build_parts (or "
                             "call Flow.attach(model, image_tok) after creating it)")
        return model.extras["flow"]

    def to_pixels(self, image_tok, images: Tensor):
        """(B, N, d) latents in the tokenizer's units -> (B, H, W, 3) uint8."""
        z = rearrange(images.float().cpu(), "b (h w) d -> b h w d", h=self.vocab.grid[0])
        if self.cfg.decode == "nearest_code":
            return image_tok.decode_latents(z, quantize=True)
        if getattr(image_tok.config, "latent_norm", "none") == "l2":
            z = F.normalize(z, dim=-1)           # back onto the sphere the decoder knows
        return image_tok.decode_latents(z, quantize=False)

    # ---- inputs -------------------------------------------------------------------------------
    def embed(self, model: TokenModel, tokens: Tensor, pos: Tensor, extra: dict) -> Tensor:
        """Text and specials: token embeddings. Image positions: in_proj(latent) + time(t),
        clean codebook latents at t = 1 unless `extra` marks them as flow targets:
        extra["target"] (B, T) bool, with extra["x_t"] (M, d) and extra["t"] (M,) for its
        True positions in row-major order."""
        x = model.embed_tokens(tokens, pos)                                  # (B, T, D)
        is_code = tokens >= self.vocab.code_start
        target = extra.get("target")
        if self.cfg.input_images == "codes":     # input images keep their code embeddings
            is_code = torch.zeros_like(is_code)
        where = is_code if target is None else is_code | target
        if not bool(where.any()):
            return x
        head = self.head(model)
        sel = where.nonzero(as_tuple=True)
        codes = (tokens[sel] - self.vocab.code_start).clamp(0, self.vocab.n_codes - 1)
        z = head.latents(codes)                                              # (C, d)
        t = torch.ones(len(codes), device=z.device)                          # (C,)
        if target is not None:
            tg = target[sel].nonzero(as_tuple=True)
            x_t, t_t = extra["x_t"], extra["t"]
            if len(x_t) != len(tg[0]) or len(t_t) != len(tg[0]):
                raise ValueError(f"extra['x_t'] / extra['t'] hold {len(x_t)} / {len(t_t)} "
                                 f"latents for {len(tg[0])} target positions")
            z = z.index_put(tg, x_t.to(z.dtype))
            t = t.index_put(tg, t_t.to(t.dtype))
        e = head.embed(z, t)                                                 # (C, D)
        if model.image_pos is not None:          # learned cell embeddings (unified.py)
            e = e + model.cell_embedding(pos[sel])
        return x.index_put(sel, e.to(x.dtype))

    # ---- training -----------------------------------------------------------------------------
    def format(self, turn: Turn, rng: random.Random) -> Packed:
        if turn.task in ("t2i", "edit") and rng.random() < self.cfg.cfg_dropout:
            turn = drop_condition(turn)
        return format_turn(self.vocab, turn)

    def sample_t(self, n: int, generator=None, device=None) -> Tensor:
        """(n,) flow times in (0, 1) for training."""
        c = self.cfg
        if c.t_sampling == "uniform":
            return torch.rand(n, generator=generator, device=device)
        return torch.sigmoid(c.t_mean + c.t_std * torch.randn(n, generator=generator,
                                                              device=device))

    def loss(self, model: TokenModel, batch: Batch, generator=None):
        v, head = self.vocab, self.head(model)
        tokens, dev = batch.tokens, batch.tokens.device
        is_code = tokens >= v.code_start
        target = batch.loss & is_code                                        # (B, T) generated
        x1 = head.latents(tokens[target] - v.code_start)                     # (M, d)
        t_row = self.sample_t(len(tokens), generator, dev)                   # (B,) one per image
        t = t_row[:, None].expand_as(tokens)[target]                         # (M,)
        x0 = torch.randn(x1.shape, generator=generator, device=dev)          # (M, d)
        x_t = t[:, None] * x1 + (1 - t[:, None]) * x0
        extra = {**batch.extra, "target": target, "x_t": x_t, "t": t}
        h = self.hidden(model, tokens, batch.pos, self.training_mask(batch),
                        extra)                                               # (B, T, D)
        txt = batch.loss[:, 1:] & ~is_code[:, 1:]                            # next token is text
        ce = F.cross_entropy(model.logits(h[:, :-1][txt], 0, v.text_end).float(),
                             tokens[:, 1:][txt], reduction="none")           # (M_text,)
        if self.cfg.predict == "codes":
            before = F.pad(target[:, 1:], (0, 1))                            # (B, T) i - 1
            v_pred = self.velocity_from_codes(model, h[before], x_t, t)      # (M, d)
        else:
            v_pred = head.out_proj(h[target]).float()                        # (M, d)
        mse = (v_pred - (x1 - x0)).pow(2).mean(-1)                           # (M,)
        how = self.cfg.loss_reduction
        zero = h.sum() * 0.0                     # keeps the graph when a term is absent
        l_text = reduce_loss(ce, txt, how) if len(ce) else zero
        l_img = reduce_loss(mse, target, how) if len(mse) else zero
        stats = {"loss/text": ce.mean().item() if len(ce) else float("nan"),
                 "loss/image": mse.mean().item() if len(mse) else float("nan")}
        return l_text + self.cfg.image_loss_weight * l_img, stats

    def velocity_from_codes(self, model: TokenModel, h: Tensor, x_t: Tensor,
                            t: Tensor | float) -> Tensor:
        """predict = codes: hidden states (..., D) before each latent, its noisy value x_t
        (..., d) at time t ((...) or a float) -> velocity (..., d), float32."""
        v, head = self.vocab, self.head(model)
        p = model.logits(h, v.code_start, v.code_start + v.n_codes).float().softmax(-1)
        x1_hat = p @ (head.codebook * head.scale)                            # (..., d)
        gap = (1 - torch.as_tensor(t, dtype=torch.float32, device=h.device)).clamp_min(
            self.cfg.min_gap)
        return (x1_hat - x_t.float()) / (gap[..., None] if gap.dim() else gap)

    # ---- sampling -----------------------------------------------------------------------------
    def function_evaluations(self, steps: int | None = None, sampler: str | None = None) -> int:
        """Backbone forwards over the image span per image (guidance rows share a forward)."""
        return ode.evaluations(sampler or self.cfg.sampler, steps or self.cfg.steps)

    @torch.no_grad()
    def generate_images(self, model: TokenModel, turns: list[Turn], guidance: float = 1.0,
                        sampling: SamplingConfig = SamplingConfig(), generator=None,
                        steps: int | None = None, sampler: str | None = None) -> Tensor:
        """Sample one image per turn by integrating the learned velocity from noise ->
        (B, N, d) latents in the tokenizer's units (to_pixels decodes them)."""
        v, head = self.vocab, self.head(model)
        use_cfg = guidance != 1.0
        src = turns + [drop_condition(t) for t in turns] if use_cfg else turns
        dev = next(model.parameters()).device
        batch = collate([format_turn(v, t, with_target=False) for t in src], v.pad,
                        left=True).to(dev)                                   # ends with <boi>
        R, T = batch.tokens.shape
        B, N, d = len(turns), v.n_image, head.latent_dim
        cache = model.new_cache(R, T + N, device=dev, reuse=True)
        extra = {k: x.to(dev) for k, x in self.extras_for(src).items()}
        h_boi = self.hidden(model, batch.tokens, batch.pos, self.prefix_attention(batch),
                            extra, cache=cache, last=True)[:, -1]  # prefix, once
        t0 = batch.valid.sum(1)                                              # (R,) latent 0 index
        pos = torch.stack([image_positions(t0, k, v.grid) for k in range(N)], dim=1)  # (R, N, 3)
        keys = torch.cat([batch.valid, torch.ones(R, N, dtype=torch.bool, device=dev)], 1)
        att = keys[:, None, None, :].expand(R, 1, N, T + N)   # prefix + the whole image span
        tok = torch.full((R, N), v.code_start, dtype=torch.long, device=dev)  # placeholders
        target = torch.ones(R, N, dtype=torch.bool, device=dev)

        def velocity(x: Tensor, t: float) -> Tensor:                         # (B, N, d)
            x_r = x.repeat(R // B, 1, 1)                                     # (R, N, d)
            ext = {"target": target, "x_t": x_r.reshape(R * N, d),
                   "t": torch.full((R * N,), t, device=dev)}
            h = self.hidden(model, tok, pos, att, ext, cache=cache, start=T)  # (R, N, D)
            if self.cfg.predict == "codes":                                  # read at i - 1
                h = torch.cat([h_boi[:, None], h[:, :-1]], dim=1)
                vel = self.velocity_from_codes(model, h, x_r, t)             # (R, N, d)
            else:
                vel = head.out_proj(h).float()                               # (R, N, d)
            return guide(vel, guidance) if use_cfg else vel                  # (B, N, d)

        if sampling.temperature > 0:
            x0 = sampling.temperature * torch.randn(B, N, d, generator=generator, device=dev)
        else:
            x0 = torch.zeros(B, N, d, device=dev)
        x1, _ = ode.integrate(velocity, x0, steps or self.cfg.steps, sampler or self.cfg.sampler)
        return x1 / head.scale

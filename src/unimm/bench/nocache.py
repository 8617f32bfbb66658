"""Reference samplers without caches, for `unimm bench speed`'s cache-gain rows: the same
sampling as the paradigms' cached samplers, recomputing everything at every step, so that the
bench can time what each cache saves on the same model and inputs.

They live with the bench, not in tests/, because the bench times them: they are the baseline of
a reported speed-up, not a correctness check (tests/reference.py holds the text decoder that
tests compare with). Greedy, batch 1, guidance 1:
- autoregressive: the whole sequence recomputed for every code (vs the KV cache);
- masked: prompt + image span recomputed at every step (vs the prompt cache);
- flow: prompt + latents recomputed at every step, Euler/Heun from the prior's mean (vs the
  prompt cache).
How many outputs agree with the cached sampler is recorded by the bench, not asserted.

Letters: T prompt length, N codes (or latents) per image, d latent dim.
"""

from __future__ import annotations

import torch


def _prompt(p, turn, dev):
    from ..paradigms.base import format_turn
    from ..paradigms.sequence import collate
    v = p.vocab
    batch = collate([format_turn(v, turn, with_target=False)], v.pad, left=True).to(dev)
    extra = {k: x.to(dev) for k, x in p.extras_for([turn]).items()}
    return batch, extra


def _span_layout(p, batch, dev):
    """Positions (1, T + N, 3) and mask (1, 1, T + N, T + N) of prompt + image span: the
    prompt attends as the paradigm says, the span attends to everything (as the cached
    samplers' image steps do)."""
    from ..paradigms.sequence import image_positions
    v = p.vocab
    T, N = batch.tokens.shape[1], v.n_image
    t0 = batch.valid.sum(1)
    span = torch.stack([image_positions(t0, k, v.grid) for k in range(N)], dim=1)  # (1, N, 3)
    mask = torch.zeros(1, 1, T + N, T + N, dtype=torch.bool, device=dev)
    mask[..., :T, :T] = p.prefix_attention(batch)
    mask[..., T:, :] = True
    return torch.cat([batch.pos, span], 1), mask


def ar_no_cache(p, model, turn, dev) -> torch.Tensor:
    """Greedy code-by-code sampling recomputing the whole sequence for every code -> (1, N)."""
    from ..paradigms.sequence import image_positions
    v = p.vocab
    batch, extra = _prompt(p, turn, dev)
    tokens, pos = batch.tokens, batch.pos
    T, lo, hi = tokens.shape[1], v.code_start, v.code_start + v.n_codes
    codes = []
    for k in range(v.n_image):
        h = p.hidden(model, tokens, pos, None, extra)[:, -1]            # (1, D), causal
        code = model.logits(h, lo, hi).float().argmax(-1)                # (1,)
        codes.append(code)
        tokens = torch.cat([tokens, (code + lo)[:, None]], 1)
        nxt = image_positions(torch.tensor([T], device=dev), k, v.grid)         # (1, 3)
        pos = torch.cat([pos, nxt[:, None]], 1)
    return torch.stack(codes, 1)


def masked_no_cache(p, model, turn, dev) -> torch.Tensor:
    """Greedy parallel decoding recomputing prompt + image span at every step -> (1, N)."""
    from ..paradigms.masked import reveal, reveal_counts
    from ..paradigms.sampling import GREEDY
    v = p.vocab
    batch, extra = _prompt(p, turn, dev)
    pos, mask = _span_layout(p, batch, dev)
    T, N, lo, hi = batch.tokens.shape[1], v.n_image, v.code_start, v.code_start + v.n_codes
    codes = torch.zeros(1, N, dtype=torch.long, device=dev)
    masked = torch.ones(1, N, dtype=torch.bool, device=dev)
    steps = p.cfg.steps
    for s, k in enumerate(reveal_counts(N, steps)):
        tok = torch.where(masked, v.mask, codes + lo)
        h = p.hidden(model, torch.cat([batch.tokens, tok], 1), pos, mask, extra)[:, T:]
        noise = p.cfg.confidence_noise * (1 - s / steps)
        cand, new = reveal(model.logits(h, lo, hi).float(), masked, k, GREEDY, noise)
        codes = torch.where(new, cand, codes)
        masked = masked & ~new
    return codes


def flow_no_cache(p, model, turn, dev) -> torch.Tensor:
    """Euler/Heun from the prior's mean recomputing prompt + latents at every step -> (1, N, d)."""
    from ..paradigms import ode
    v, head = p.vocab, p.head(model)
    batch, extra = _prompt(p, turn, dev)
    pos, mask = _span_layout(p, batch, dev)
    T, N, d = batch.tokens.shape[1], v.n_image, head.latent_dim
    tok = torch.cat([batch.tokens, torch.full((1, N), v.code_start, device=dev)], 1)
    target = torch.zeros(1, T + N, dtype=torch.bool, device=dev)
    target[:, T:] = True

    def velocity(x, t):
        ext = {**extra, "target": target, "x_t": x.reshape(N, d),
               "t": torch.full((N,), t, device=dev)}
        return head.out_proj(p.hidden(model, tok, pos, mask, ext)[:, T:]).float()

    x1, _ = ode.integrate(velocity, torch.zeros(1, N, d, device=dev), p.cfg.steps, p.cfg.sampler)
    return x1 / head.scale


def no_cache_loop(p):
    """(loop, what the cached sampler saves) for a paradigm's sampler family."""
    from ..paradigms.ar import Autoregressive
    from ..paradigms.flow import Flow
    from ..paradigms.masked import Masked
    for cls, fn, what in ((Autoregressive, ar_no_cache, "KV cache vs full recompute per code"),
                          (Masked, masked_no_cache, "prompt cache vs prompt recomputed per step"),
                          (Flow, flow_no_cache, "prompt cache vs prompt recomputed per step")):
        if isinstance(p, cls):
            return fn, what
    return None, None


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of equal codes, or 1 - relative error for latents."""
    if a.dtype == torch.long:
        return float((a == b).float().mean())
    return float(1 - (a - b).norm() / b.norm().clamp_min(1e-12))

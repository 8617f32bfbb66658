"""The per-model sections of `unimm bench speed` (bench/speed.py), measured in one process
on one model: training steps, image generation (with the caches' gain over bench/nocache.py's
loops and, for code-by-code samplers, the decode step against the memory floor), and
answering.

Notable choices:
- Measurements run from small to large footprint (answer, batch 1, batch 16, training), so
  that each CPU high-water mark (process max RSS) is mostly that measurement's own.
- Understanding masks `<eos>` out of the logits (an instance attribute over `model.logits`),
  so every answer runs to `max_new` tokens (mmada: all `text_len` slots) whatever the random
  weights would say; the same wrapper stamps the first logits call, which is the time to
  first token (mmada: the first token revealed).
- Cache gains: the cached sampler and bench/nocache.py's loop at batch 1, guidance 1, greedy,
  on the same model and prompt.
- Decode-step bytes (autoregressive): the backbone weights + the code slice of the head +
  the embedding rows of the new tokens, in the model's dtype (inference runs unautocast, as
  Pipeline does), plus the filled KV cache, averaged over the steps (context T + N/2). The
  floor is bytes / copy bandwidth; the step time is the batch's time / FE (the prefill is
  amortised into it, as in "time per step").

Letters: B images, R rows (2B with guidance), T prompt length, N codes per image, D width,
L layers.
"""

from __future__ import annotations

import statistics
import time

import torch

from .machine import bandwidth_use, decode_step_bytes, kv_bytes_per_position
from .nocache import agreement, no_cache_loop
from .timing import PeakMemory, sync, timed

BATCHES = (1, 16)
GUIDANCES = (1.0, 1.5)
MAX_NEW = 32                         # answer tokens timed in the understanding section


class _Prepared:
    """A TaskStream stand-in serving batches made beforehand (model-only step time)."""

    def __init__(self, batches):
        self.batches = batches

    def batch(self, step: int):
        return self.batches[step % len(self.batches)]


def measure_training(tr, dev, repeats: int, warmup: int) -> dict:
    n = warmup + repeats
    real = tr.stream
    t0 = time.perf_counter()
    batches = [real.batch(s) for s in range(n)]
    data_s = (time.perf_counter() - t0) / n
    T = statistics.mean(b.tokens.shape[1] for b in batches)
    tokens = statistics.mean(int(b.valid.sum()) for b in batches)
    padded = statistics.mean(b.tokens.numel() for b in batches)
    out = {"batch_size": tr.cfg.train.batch_size, "mean_padded_len": T, "tokens_per_step": tokens,
           "padded_tokens_per_step": padded, "data_s_per_batch": data_s,
           "precision": tr.cfg.train.precision,
           "flops_per_token": tr.model.backbone.flops_per_token(round(T))}
    for mode, stream in (("model_only", _Prepared(batches)), ("end_to_end", real)):
        tr.stream, tr.step = stream, 0
        with PeakMemory(dev) as pm:
            t = timed(tr.train_step, dev, repeats, warmup)
        out[mode] = {**t, "tokens_per_s": tokens / t["median_s"], **pm.result}
    tr.stream = real
    return out


def measure_generation(parts, model, dev, turns, sampling, repeats: int, warmup: int) -> dict:
    from ..paradigms.sampling import GREEDY
    p = parts.paradigm
    calls = [0]
    hook = model.backbone.register_forward_pre_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    out = {"fe_per_image": p.function_evaluations(), "runs": {}}
    try:
        # cache gain first (batch 1, smallest footprint): cached sampler vs reference loop
        ref, what = no_cache_loop(p)
        gen = torch.Generator(device=dev)
        if ref is not None:
            cached = timed(lambda: p.generate_images(model, turns[:1], 1.0, GREEDY,
                                                      gen.manual_seed(0)), dev, repeats, warmup)
            with torch.no_grad():
                nocache = timed(lambda: ref(p, model, turns[0], dev), dev, repeats, warmup)
                agree = agreement(ref(p, model, turns[0], dev), p.generate_images(
                    model, turns[:1], 1.0, GREEDY, gen.manual_seed(0)))
            out["cache"] = {"what": what, "cached_s": cached["median_s"],
                            "reference_s": nocache["median_s"],
                            "speedup": nocache["median_s"] / cached["median_s"],
                            "output_agreement": agree}
        for b in BATCHES:
            for g in GUIDANCES:
                calls[0] = 0
                with PeakMemory(dev) as pm:
                    t = timed(lambda: p.generate_images(model, turns[:b], g, sampling,
                                                         gen.manual_seed(0)), dev, repeats, warmup)
                out["runs"][f"b{b}_g{g}"] = {
                    "batch": b, "guidance": g, **t, "s_per_image": t["median_s"] / b,
                    "backbone_calls": calls[0] / (repeats + warmup), **pm.result}
    finally:
        hook.remove()
    r = out["runs"]
    out["s_per_image_b1"] = r["b1_g1.0"]["s_per_image"]
    out["s_per_image_b16"] = r["b16_g1.0"]["s_per_image"]
    out["s_per_fe_b1"] = r["b1_g1.0"]["median_s"] / out["fe_per_image"]
    out["cfg_cost"] = {f"b{b}": r[f"b{b}_g1.5"]["median_s"] / r[f"b{b}_g1.0"]["median_s"]
                       for b in BATCHES}
    return out


def decode_bandwidth(parts, model, turns, gen: dict, machine: dict) -> dict | None:
    """Bytes per decode step of a code-by-code sampler against the copy bandwidth."""
    from ..paradigms.ar import Autoregressive
    from ..paradigms.base import drop_condition, format_turn
    from ..paradigms.sequence import collate
    p, v, c = parts.paradigm, parts.vocab, model.cfg
    if not isinstance(p, Autoregressive):
        return None
    elem = next(model.parameters()).element_size()
    bw = machine["copy"]["gb_per_s"] * 1e9
    peak = machine["matmul_fp32" if elem == 4 else "matmul_bf16"]["peak_gflops"] * 1e9
    kv = kv_bytes_per_position(c.n_layers, c.n_kv_heads, c.head_dim, elem)
    out = {"dtype_bytes": elem, "kv_bytes_per_position": kv}
    for key, run in gen["runs"].items():
        b, g = run["batch"], run["guidance"]
        src = turns[:b] + ([drop_condition(t) for t in turns[:b]] if g != 1.0 else [])
        rows = len(src)
        T = collate([format_turn(v, t, with_target=False) for t in src], v.pad,
                    left=True).tokens.shape[1]                   # padded prompt length
        context = T + v.n_image / 2                       # keys read, averaged over the steps
        weights = model.backbone.num_params() + (v.n_codes + rows) * c.dim   # + head slice + rows
        step_s = run["median_s"] / gen["fe_per_image"]
        flops = 2 * weights * rows + 4 * c.n_layers * c.dim * context * rows
        out[key] = {"rows": rows, "context": context,
                    **bandwidth_use(decode_step_bytes(weights * elem, kv, rows, context),
                                    step_s, bw),
                    "compute_floor_s": flops / peak}
    return out


def measure_understanding(parts, model, dev, turn, repeats: int, warmup: int) -> dict:
    from ..paradigms.sampling import GREEDY
    p, v = parts.paradigm, parts.vocab
    room = model.cfg.max_seq_len - (len(turn.text) + v.n_image + 8)
    max_new = max(1, min(MAX_NEW, room))
    orig = model.logits
    st = {"first": None, "calls": 0, "t0": 0.0}

    def logits(h, lo=0, hi=None):           # no <eos>: answers run to max_new; stamps token 1
        out = orig(h, lo, hi)
        if lo <= v.eos < (model.vocab_size if hi is None else hi):
            out[..., v.eos - lo] = float("-inf")
        if st["first"] is None:
            sync(dev)
            st["first"] = time.perf_counter()
        st["calls"] += 1
        return out

    ttft, lens, calls = [], [], []

    def run():
        st.update(first=None, calls=0, t0=time.perf_counter())
        ans = p.generate_text(model, [turn], max_new, GREEDY, None)
        ttft.append(st["first"] - st["t0"])
        lens.append(len(ans[0]))
        calls.append(st["calls"])

    model.logits = logits
    try:
        with PeakMemory(dev) as pm:
            t = timed(run, dev, repeats, warmup)
    finally:
        del model.logits
    n, first = lens[-1], statistics.median(ttft[warmup:])
    return {**t, "max_new": max_new, "tokens": n, "decode_calls": calls[-1],
            "ttft_s": first, "ttft_spread": [min(ttft[warmup:]), max(ttft[warmup:])],
            "tokens_per_s": n / t["median_s"],
            "decode_tokens_per_s": (n - 1) / max(t["median_s"] - first, 1e-12), **pm.result}

"""`unimm bench speed`: how fast our own models train, draw and answer, against what the
machine can do.

Four sections, written to `speed.json`, `speed.md` (one table per section) and `speed.png`
(seconds per image by paradigm, batch and guidance):

1. Machine constants, measured: the best GFLOP/s of square matmuls (fp32 and bf16, a few
   sizes) and the bandwidth of a large tensor copy, GB/s = (bytes read + bytes written) / s
   (the STREAM "copy" convention). They are the denominators of every utilisation below.
2. Training, per paradigm and model size: `Trainer.train_step` (batching, bf16 autocast as
   configured, backward, clipping, AdamW) timed twice: end to end with the real TaskStream,
   and model-only with the same batches prepared beforehand. tokens/s counts non-padding
   tokens; MFU = backbone.flops_per_token(T) * tokens/s / peak, T the mean padded length,
   peak the measured bf16 matmul peak when the config trains in bf16, else the fp32 one.
3. Generation (`paradigm.generate_images`, the sampler without pixel decoding), per paradigm:
   seconds per image at batch 1 and 16, with guidance 1.0 and 1.5 (CFG cost = ratio),
   function evaluations (FE) per image, time per FE (batch 1, guidance 1), the gain of the
   sampler's cache over a reference loop without it, peak memory, and for code-by-code
   (autoregressive) samplers the bytes a decode step must read against the copy bandwidth.
4. Understanding (`paradigm.generate_text`, what `Pipeline.ask` runs) at batch 1: time to
   first token and tokens/s.

Notable choices:
- Weights are random: speed does not depend on what a model learned, and a random model of
  the real shape costs nothing to make. The image tokenizer is random too (the config's
  architecture; or `--tokenizer` a trained folder), the text BPE is fitted on the config's
  corpus as training does, so batches and prompts come from the real TaskStream and the real
  examples with their real lengths.
- Understanding masks `<eos>` out of the logits (an instance attribute over `model.logits`),
  so every answer runs to `max_new` tokens (mmada: all `text_len` slots) whatever the random
  weights would say; the same wrapper stamps the first logits call, which is the time to
  first token (mmada: the first token revealed).
- Each (paradigm, size) runs in its own process (bench.common.in_child): no shared heap or
  allocator cache, and the process's max RSS (the CPU's peak memory, `resource.getrusage`,
  process-wide: interpreter, torch and model included) belongs to one model. Inside a process
  the measurements run from small to large footprint (answer, batch 1, batch 16, training), so
  each high-water mark is mostly that measurement's own. On CUDA the peak is
  `torch.cuda.max_memory_allocated` per measurement.
- Reference loops (no cache) live here, only for timing: autoregressive samplers recompute
  the whole sequence for every code; masked and flow samplers recompute the prompt with the
  image span at every step. Both run at batch 1, guidance 1, greedy, next to the cached
  sampler under the same settings; how many outputs agree is recorded (not asserted).
- Decode-step bytes (autoregressive): the backbone weights + the code slice of the head +
  the embedding rows of the new tokens, in the model's dtype (inference runs unautocast, as
  Pipeline does), plus the filled KV cache, averaged over the steps (context T + N/2). The
  floor is bytes / copy bandwidth; the step time is the batch's time / FE (the prefill is
  amortised into it, as in "time per step").
- Threads are set explicitly (`--threads`, default 1) in every process; CUDA timings
  synchronise before the clock stops.

Letters: B images, R rows (2B with guidance), T prompt length, N codes per image, D width,
L layers, g kv heads, e head dim, K codebook size.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import conditions, describe, in_child, timeit

SIZES: dict[str, dict | None] = {   # name -> backbone shape over the config's (None = as is)
    "default": None,
    # 12 x 3.98M (attention 4 D^2 + SwiGLU 3 D 1536) + 2 x 2568 x 576 embeddings/head with
    # shapes_ar's vocabulary = 50.7M parameters; head_dim 64
    "50m": {"dim": 576, "n_layers": 12, "n_heads": 9},
}
DEVICES = ("cpu", "cuda", "auto")
BATCHES = (1, 16)
GUIDANCES = (1.0, 1.5)
MAX_NEW = 32                         # answer tokens timed in the understanding section


# ---- timing and memory ------------------------------------------------------------------------

def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn, dev: torch.device, repeats: int, warmup: int = 1) -> dict:
    """timeit() with the device synchronised before the clock stops."""
    def run():
        fn()
        _sync(dev)
    _sync(dev)
    return timeit(run, repeats=repeats, warmup=warmup)


def _max_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2 ** 20 if sys.platform == "darwin" else r / 2 ** 10     # bytes vs KiB


def _memory_now(dev: torch.device) -> float:
    """MiB allocated on the GPU now, or the process's max RSS so far (CPU)."""
    return torch.cuda.memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else _max_rss_mb()


class PeakMemory:
    """Peak memory over a block: CUDA max_memory_allocated, or the process's max RSS."""

    def __init__(self, dev: torch.device):
        self.dev, self.result = dev, {}

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.start = torch.cuda.memory_allocated(self.dev)
        else:
            self.start = _max_rss_mb()
        return self

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            peak = torch.cuda.max_memory_allocated(self.dev) / 2 ** 20
            self.result = {"peak_mb": peak, "above_start_mb": peak - self.start / 2 ** 20,
                           "memory_kind": "cuda max_memory_allocated"}
        else:
            peak = _max_rss_mb()
            self.result = {"peak_mb": peak, "above_start_mb": peak - self.start,
                           "memory_kind": "process max RSS (process-wide)"}
        return False


# ---- 1. machine constants ---------------------------------------------------------------------

def matmul_peak(dev: torch.device, dtype: torch.dtype, sizes: tuple[int, ...],
                repeats: int) -> dict:
    """Best GFLOP/s of (n, n) @ (n, n) over sizes; 2 n^3 FLOPs each (median of repeats)."""
    per = {}
    for n in sizes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        t = _timed(lambda: a @ b, dev, repeats, warmup=2)
        per[str(n)] = 2 * n ** 3 / t["median_s"] / 1e9
    return {"gflops_by_size": per, "peak_gflops": max(per.values())}


def copy_bandwidth(dev: torch.device, mbytes: int, repeats: int) -> dict:
    """GB/s of dst.copy_(src) for an fp32 tensor of `mbytes` MiB, counting read + write."""
    n = mbytes * 2 ** 20 // 4
    src = torch.rand(n, device=dev)
    dst = torch.empty_like(src)
    t = _timed(lambda: dst.copy_(src), dev, repeats, warmup=2)
    return {"mbytes": mbytes, "gb_per_s": 2 * n * 4 / t["median_s"] / 1e9,
            "best_gb_per_s": 2 * n * 4 / t["min_s"] / 1e9}


def read_bandwidth(dev: torch.device, mbytes: int, repeats: int) -> dict:
    """GB/s of one streaming read: the sum of an fp32 tensor of `mbytes` MiB (take a size well
    above the last-level cache to measure main memory)."""
    x = torch.rand(mbytes * 2 ** 20 // 4, device=dev)
    t = _timed(lambda: x.sum(), dev, repeats, warmup=2)
    return {"mbytes": mbytes, "gb_per_s": x.numel() * 4 / t["median_s"] / 1e9,
            "best_gb_per_s": x.numel() * 4 / t["min_s"] / 1e9}


def gemm_seconds(shapes, dev: torch.device, calls: int = 25) -> dict[tuple, float]:
    """For each fp32 product (M, K, N), i.e. x (M, K) times a weight (N, K) transposed, the
    fastest of `calls` timed calls (hot cache) over the kernels this torch offers: F.linear
    (MKL / cuBLAS) and on a CPU also oneDNN on a weight packed once (what `layers.linear` runs
    for prompt fills). A floor for those products on this machine, not their cost in place,
    where weights and caches come from further away."""
    import torch.nn.functional as F
    out = {}
    for m, k, n in shapes:
        x, w = torch.randn(m, k, device=dev), torch.randn(n, k, device=dev)
        kernels = [lambda: F.linear(x, w)]
        if dev.type == "cpu" and torch.backends.mkldnn.is_available():
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(w, m)
                kernels.append(lambda p=packed: torch.ops.mkldnn._linear_pointwise(
                    x, p, None, "none", [], ""))
            except (RuntimeError, AttributeError):   # a build without oneDNN's packed linear
                pass
        best = float("inf")
        for fn in kernels:
            for _ in range(3):
                fn()
            _sync(dev)
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                _sync(dev)
                best = min(best, time.perf_counter() - t)
        out[(m, k, n)] = best
    return out


def machine_constants(dev: torch.device, quick: bool, repeats: int) -> dict:
    if dev.type == "cuda":
        sizes = (256, 512, 1024) if quick else (1024, 2048, 4096, 8192)
        mb = 64 if quick else 1024
    else:
        sizes, mb = ((64, 128, 256) if quick else (256, 512, 1024, 2048)), (16 if quick else 512)
    return {"matmul_fp32": matmul_peak(dev, torch.float32, sizes, repeats),
            "matmul_bf16": matmul_peak(dev, torch.bfloat16, sizes, repeats),
            "copy": copy_bandwidth(dev, mb, repeats),
            "tf32_matmul": bool(dev.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)}


# ---- decode-step floor (pure arithmetic, unit-tested) ------------------------------------------

def kv_bytes_per_position(n_layers: int, n_kv_heads: int, head_dim: int, elem: int) -> int:
    """Bytes of keys + values of one row at one position, all layers."""
    return 2 * n_layers * n_kv_heads * head_dim * elem


def decode_step_bytes(weight_bytes: float, kv_per_position: float, rows: int,
                      context: float) -> float:
    """Bytes one decode step must read: every weight once (shared by all rows) + each row's
    filled KV cache (`context` positions)."""
    return weight_bytes + kv_per_position * rows * context


def bandwidth_use(step_bytes: float, step_s: float, bandwidth: float) -> dict:
    """Floor = bytes / bandwidth (bytes/s); utilisation = bytes / step_s / bandwidth."""
    floor = step_bytes / bandwidth
    return {"bytes_per_step": step_bytes, "floor_s": floor, "step_s": step_s,
            "step_over_floor": step_s / floor, "bandwidth_utilisation": floor / step_s}


# ---- reference loops without caches (timing only) ----------------------------------------------

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


def _reference(p):
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


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of equal codes, or 1 - relative error for latents."""
    if a.dtype == torch.long:
        return float((a == b).float().mean())
    return float(1 - (a - b).norm() / b.norm().clamp_min(1e-12))


# ---- one (paradigm, size), in its own process --------------------------------------------------

def _run_config(spec: dict):
    from ..runs import RunConfig
    from ..utils.config import load_config
    cfg = load_config(RunConfig, spec["config"], [
        f"paradigm={spec['paradigm']}", f"train.threads={spec['threads']}",
        f"train.device={spec['device']}"])
    shape = SIZES[spec["size"]]
    if shape:
        model = dataclasses.replace(cfg.model, **shape, n_kv_heads=None, mlp_hidden=None,
                                    rope_sections=None)
        cfg = dataclasses.replace(cfg, model=model)
    return cfg


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
            t = _timed(tr.train_step, dev, repeats, warmup)
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
        ref, what = _reference(p)
        gen = torch.Generator(device=dev)
        if ref is not None:
            cached = _timed(lambda: p.generate_images(model, turns[:1], 1.0, GREEDY,
                                                      gen.manual_seed(0)), dev, repeats, warmup)
            with torch.no_grad():
                nocache = _timed(lambda: ref(p, model, turns[0], dev), dev, repeats, warmup)
                agree = _agreement(ref(p, model, turns[0], dev), p.generate_images(
                    model, turns[:1], 1.0, GREEDY, gen.manual_seed(0)))
            out["cache"] = {"what": what, "cached_s": cached["median_s"],
                            "reference_s": nocache["median_s"],
                            "speedup": nocache["median_s"] / cached["median_s"],
                            "output_agreement": agree}
        for b in BATCHES:
            for g in GUIDANCES:
                calls[0] = 0
                with PeakMemory(dev) as pm:
                    t = _timed(lambda: p.generate_images(model, turns[:b], g, sampling,
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
            _sync(dev)
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
            t = _timed(run, dev, repeats, warmup)
    finally:
        del model.logits
    n, first = lens[-1], statistics.median(ttft[warmup:])
    return {**t, "max_new": max_new, "tokens": n, "decode_calls": calls[-1],
            "ttft_s": first, "ttft_spread": [min(ttft[warmup:]), max(ttft[warmup:])],
            "tokens_per_s": n / t["median_s"],
            "decode_tokens_per_s": (n - 1) / max(t["median_s"] - first, 1e-12), **pm.result}


def measure(spec: dict) -> dict:
    """Every per-model section for one (paradigm, size); runs in a child process."""
    from ..paradigms.ar import Autoregressive
    from ..paradigms.sampling import SamplingConfig
    from ..data.worlds import make_source
    from ..train.data import Encoder
    from ..train.trainer import Trainer
    torch.set_num_threads(spec["threads"])
    cfg = _run_config(spec)
    run_dir = Path(spec["work"]) / f"{spec['paradigm']}-{spec['size']}"
    shutil.copytree(Path(spec["work"]) / "tokenizer", run_dir / "tokenizer")
    tr = Trainer(cfg, run_dir, progress=False)
    parts, model, dev = tr.parts, tr.model, tr.device
    repeats, warmup = spec["repeats"], 1
    src = make_source(cfg.data, "val")
    enc = Encoder(parts.text_tok, parts.image_tok)
    t2i = enc.turns([src.example(i, "t2i") for i in range(max(BATCHES))])
    vqa = enc.turns([src.example(0, "vqa")])[0]
    ev = cfg.eval
    sampling = SamplingConfig(ev.temperature, ev.top_k, ev.top_p)
    row = {"paradigm": spec["paradigm"], "size": spec["size"], "params": model.num_params(),
           "backbone_params": model.backbone.num_params(),
           "shape": {"dim": cfg.model.dim, "n_layers": cfg.model.n_layers,
                     "n_heads": cfg.model.n_heads, "max_seq_len": cfg.model.max_seq_len},
           "conditions": conditions(), "memory_after_build_mb": _memory_now(dev)}
    model.eval()
    with torch.no_grad():
        row["understanding"] = measure_understanding(parts, model, dev, vqa, repeats, warmup)
        row["generation"] = measure_generation(parts, model, dev, t2i, sampling, repeats, warmup)
    row["generation"]["sampling"] = dataclasses.asdict(sampling)
    row["generation"]["bandwidth"] = decode_bandwidth(parts, model, t2i, row["generation"],
                                                      spec["machine"])
    if spec.get("bf16"):
        # the same timings with sampling under bf16 autocast (eval.precision = "bf16")
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            row["generation_bf16"] = measure_generation(parts, model, dev, t2i, sampling,
                                                        repeats, warmup)
    if spec.get("compile") and isinstance(parts.paradigm, Autoregressive):
        # the same timings with compiled decoding steps (model/decode.py); compiles happen in
        # the warm-up runs, one per (rows, cache capacity)
        model.compile_decode()
        with torch.no_grad():
            comp = measure_generation(parts, model, dev, t2i, sampling, repeats, warmup)
        comp["bandwidth"] = decode_bandwidth(parts, model, t2i, comp, spec["machine"])
        comp["compile_failed"] = model.__dict__["_decode"].failed
        if spec.get("bf16"):
            # and under bf16 autocast: the steps' library then computes in bf16
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
                row["generation_compiled_bf16"] = measure_generation(
                    parts, model, dev, t2i, sampling, repeats, warmup)
        model.compile_decode(False)
        row["generation_compiled"] = comp
    row["training"] = measure_training(tr, dev, repeats, max(warmup, 2))
    peak_flops = spec["machine"]["matmul_bf16" if cfg.train.precision == "bf16"
                                 else "matmul_fp32"]["peak_gflops"] * 1e9
    tt = row["training"]
    tt["mfu_peak"] = "bf16" if cfg.train.precision == "bf16" else "fp32"
    for mode in ("model_only", "end_to_end"):
        tt[mode]["mfu"] = tt["flops_per_token"] * tt[mode]["tokens_per_s"] / peak_flops
    return row


# ---- the whole benchmark (parent process) ------------------------------------------------------

def _prepare_tokenizers(cfg, work: Path, tokenizer: Path | None) -> None:
    """work/tokenizer/{image,text}: the given (or a random) image tokenizer, a fitted BPE."""
    from ..tokenizers.image import build_image_tokenizer, load_image_tokenizer
    from ..tokenizers.text import TextTokenizer
    from ..data.worlds import make_source, text_corpus
    img_dir = work / "tokenizer" / "image"
    if tokenizer is not None:
        tok = load_image_tokenizer(tokenizer)                    # clear error if it is not one
        if tok.image_size != cfg.data.world.image_size:
            raise ValueError(f"--tokenizer {tokenizer} reads {tok.image_size}px images but the "
                             f"config's data is {cfg.data.world.image_size}px")
        shutil.copytree(tokenizer, img_dir)
    else:
        tc = dataclasses.replace(cfg.image_tokenizer.tokenizer,
                                 image_size=cfg.data.world.image_size)
        torch.manual_seed(0)
        build_image_tokenizer(tc).eval().save(img_dir)
    src = make_source(cfg.data, "train")
    TextTokenizer.train(text_corpus(src, cfg.data.text_corpus),
                        cfg.data.text_vocab_size).save(work / "tokenizer" / "text")


def check_options(paradigms: list[str], sizes: list[str], device: str, threads: int,
                  repeats: int) -> None:
    from ..paradigms import PARADIGMS
    unknown = [n for n in paradigms if n not in PARADIGMS]
    if unknown or not paradigms:
        raise ValueError(f"unknown paradigm(s) {unknown or paradigms}; available: "
                         f"{', '.join(PARADIGMS)}")
    bad = [s for s in sizes if s not in SIZES]
    if bad or not sizes:
        raise ValueError(f"unknown size(s) {bad or sizes}; available: {', '.join(SIZES)}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if threads < 1 or repeats < 1:
        raise ValueError(f"threads and repeats must be >= 1, got {threads} and {repeats}")


def bench_speed(config: Path, paradigms: list[str], sizes: list[str], out_dir: Path,
                repeats: int = 5, device: str = "cpu", threads: int = 1, quick: bool = False,
                tokenizer: Path | None = None, compile: bool = False,
                bf16: bool = False) -> dict:
    from ..runs import RunConfig, resolve_device
    from ..utils.config import load_config
    from ..utils.io import write_json, write_text
    check_options(paradigms, sizes, device, threads, repeats)
    repeats = 1 if quick else repeats
    cfg = load_config(RunConfig, config)
    dev = resolve_device(device)
    torch.set_num_threads(threads)
    start = conditions()
    machine = machine_constants(dev, quick, max(repeats, 3))
    print(json.dumps({"machine": machine}), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="unimm-speed-") as tmp:
        work = Path(tmp)
        _prepare_tokenizers(cfg, work, tokenizer)
        for size in sizes:
            for name in paradigms:
                spec = {"config": str(config), "paradigm": name, "size": size, "device": dev.type,
                        "threads": threads, "repeats": repeats, "work": str(work),
                        "machine": machine, "compile": compile, "bf16": bf16}
                rows.append(in_child("unimm.bench.speed:measure", spec, work,
                                     f"{spec['paradigm']} @ {spec['size']}"))
                print(_summary(rows[-1]), flush=True)
    result = {"conditions": start, "conditions_end": conditions(), "config": str(config),
              "device": dev.type, "threads": threads, "repeats": repeats, "quick": quick,
              "compile": compile, "bf16": bf16,
              "tokenizer": str(tokenizer) if tokenizer else "random weights (config's shape)",
              "machine": machine, "rows": rows}
    out_dir = Path(out_dir)
    write_json(out_dir / "speed.json", result)
    write_text(out_dir / "speed.md", markdown(result))
    plot(rows, out_dir / "speed.png")
    return result


def _summary(r: dict) -> str:
    g, t, u = r["generation"], r["training"], r["understanding"]
    return (f"{r['paradigm']} @ {r['size']} ({r['params'] / 1e6:.2f}M): train "
            f"{t['model_only']['tokens_per_s']:.0f} tok/s (MFU {t['model_only']['mfu']:.1%}), "
            f"{g['s_per_image_b1']:.4f} s/image b1, {g['s_per_image_b16']:.4f} b16, "
            f"answer {u['tokens_per_s']:.0f} tok/s")


# ---- reports ------------------------------------------------------------------------------------

def _table(head: list[str], rows: list[list]) -> str:
    def cell(x):
        if x is None:
            return "n/a"
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
        return str(x)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def markdown(result: dict) -> str:
    c, m = result["conditions"], result["machine"]
    out = [f"# unimm bench speed\n\nConfig `{result['config']}`, device {result['device']}, "
           f"{result['threads']} torch thread(s), {result['repeats']} timed repeat(s) after "
           f"warm-up (median [min-max]); {describe(c, result['conditions_end'])}. Random "
           f"weights; image tokenizer: "
           f"{result['tokenizer']}.\n\n"]
    out.append("## Machine constants (measured)\n\n")
    out.append(_table(["quantity", "value", "how"], [
        ["matmul peak fp32 (GFLOP/s)", m["matmul_fp32"]["peak_gflops"],
         "best of square matmuls " + ", ".join(m["matmul_fp32"]["gflops_by_size"])],
        ["matmul peak bf16 (GFLOP/s)", m["matmul_bf16"]["peak_gflops"], "same sizes, bf16 inputs"],
        ["copy bandwidth (GB/s)", m["copy"]["gb_per_s"],
         f"{m['copy']['mbytes']} MiB tensor copy, read + write"]]))
    rows = result["rows"]
    out.append("\n## Training (Trainer.train_step: forward, backward, clip, AdamW)\n\n")
    out.append("tokens = non-padding tokens; MFU = flops_per_token(mean padded length) x tokens/s "
               "/ measured matmul peak of the training precision; model-only = batches made "
               "beforehand, end-to-end = with the TaskStream.\n\n")
    out.append(_table(["paradigm", "size", "params (M)", "precision", "tokens/step",
                       "step s (model-only)", "min-max", "tok/s", "MFU", "step s (end-to-end)",
                       "tok/s e2e", "MFU e2e", "data s/batch", "peak MB"],
                      [[r["paradigm"], r["size"], r["params"] / 1e6, r["training"]["precision"],
                        r["training"]["tokens_per_step"], r["training"]["model_only"]["median_s"],
                        f"{r['training']['model_only']['min_s']:.3g}-"
                        f"{r['training']['model_only']['max_s']:.3g}",
                        r["training"]["model_only"]["tokens_per_s"],
                        f"{r['training']['model_only']['mfu']:.2%} ({r['training']['mfu_peak']})",
                        r["training"]["end_to_end"]["median_s"],
                        r["training"]["end_to_end"]["tokens_per_s"],
                        f"{r['training']['end_to_end']['mfu']:.2%}",
                        r["training"]["data_s_per_batch"],
                        r["training"]["end_to_end"]["peak_mb"]] for r in rows]))
    out.append("\n## Generation (paradigm.generate_images, no pixel decoding)\n\n")
    out.append("s/FE = batch-1 time per image / function evaluations; CFG cost = time at "
               "guidance 1.5 / 1.0; peak memory at batch 16 with guidance.\n\n")
    out.append(_table(["paradigm", "size", "FE / image", "s / image b1", "s / image b16",
                       "s / FE (b1)", "CFG cost b1", "CFG cost b16", "peak MB b16+CFG"],
                      [[r["paradigm"], r["size"], r["generation"]["fe_per_image"],
                        r["generation"]["s_per_image_b1"], r["generation"]["s_per_image_b16"],
                        r["generation"]["s_per_fe_b1"], r["generation"]["cfg_cost"]["b1"],
                        r["generation"]["cfg_cost"]["b16"],
                        r["generation"]["runs"]["b16_g1.5"]["peak_mb"]] for r in rows]))
    out.append("\n### Cache gains (batch 1, guidance 1, greedy; reference loops written for "
               "the bench)\n\n")
    out.append(_table(["paradigm", "size", "cache", "cached s", "no-cache s", "speed-up",
                       "outputs agree"],
                      [[r["paradigm"], r["size"], g["what"], g["cached_s"], g["reference_s"],
                        g["speedup"], g["output_agreement"]]
                       for r in rows if (g := r["generation"].get("cache"))]))
    bw = [(r, r["generation"]["bandwidth"]) for r in rows if r["generation"].get("bandwidth")]
    if bw:
        out.append("\n### Autoregressive decode step vs the memory floor\n\n"
                   "bytes = weights read once per step (backbone + head code slice + new "
                   "embedding rows, model dtype) + filled KV cache (context = prompt + N/2); "
                   "floor = bytes / copy bandwidth; compute floor = FLOPs / matmul peak.\n\n")
        out.append(_table(["paradigm", "size", "batch", "guidance", "rows", "MB / step",
                           "step ms", "floor ms", "step / floor", "BW utilisation",
                           "compute floor ms"],
                          [[r["paradigm"], r["size"], r["generation"]["runs"][k]["batch"],
                            r["generation"]["runs"][k]["guidance"], b[k]["rows"],
                            b[k]["bytes_per_step"] / 1e6, b[k]["step_s"] * 1e3,
                            b[k]["floor_s"] * 1e3, b[k]["step_over_floor"],
                            f"{b[k]['bandwidth_utilisation']:.1%}", b[k]["compute_floor_s"] * 1e3]
                           for r, b in bw for k in r["generation"]["runs"]]))
    comp = [r for r in rows if r.get("generation_compiled")]
    if comp:
        out.append("\n### Compiled decoding steps (`TokenModel.compile_decode`, model/decode.py)"
                   "\n\nThe same timings with each one-token step compiled once per shape "
                   "by AOTInductor (compiles in the warm-up); speed-up = eager time / compiled "
                   "time; step and floor as above.\n\n")
        out.append(_table(["paradigm", "size", "s / image b1", "s / image b16", "speed-up b1",
                           "speed-up b16", "CFG cost b1", "CFG cost b16", "step ms b1",
                           "step / floor b1", "step / floor b1 + CFG", "fell back to eager"],
                          [[r["paradigm"], r["size"], c["s_per_image_b1"], c["s_per_image_b16"],
                            r["generation"]["s_per_image_b1"] / c["s_per_image_b1"],
                            r["generation"]["s_per_image_b16"] / c["s_per_image_b16"],
                            c["cfg_cost"]["b1"], c["cfg_cost"]["b16"],
                            c["bandwidth"]["b1_g1.0"]["step_s"] * 1e3,
                            c["bandwidth"]["b1_g1.0"]["step_over_floor"],
                            c["bandwidth"]["b1_g1.5"]["step_over_floor"],
                            c["compile_failed"] or "no"]
                           for r in rows if (c := r.get("generation_compiled"))]))
    for key, base, text in (
            ("generation_bf16", "generation",
             "\n### Sampling under bf16 autocast (`eval.precision = \"bf16\"`)\n\n"
             "The same timings with the network under bf16 autocast (outputs may differ "
             "from fp32); speed-up = fp32 time / bf16 time.\n\n"),
            ("generation_compiled_bf16", "generation_compiled",
             "\nCompiled decoding under bf16 autocast (the step library computes in "
             "bf16); speed-up = compiled fp32 time / compiled bf16 time.\n\n")):
        if any(r.get(key) for r in rows):
            out.append(text)
            out.append(_table(["paradigm", "size", "s / image b1", "s / image b16",
                               "speed-up b1", "speed-up b16", "CFG cost b1", "CFG cost b16"],
                              [[r["paradigm"], r["size"], c["s_per_image_b1"],
                                c["s_per_image_b16"],
                                r[base]["s_per_image_b1"] / c["s_per_image_b1"],
                                r[base]["s_per_image_b16"] / c["s_per_image_b16"],
                                c["cfg_cost"]["b1"], c["cfg_cost"]["b16"]]
                               for r in rows if (c := r.get(key))]))
    out.append("\n## Understanding (paradigm.generate_text, batch 1, <eos> masked out)\n\n")
    out.append(_table(["paradigm", "size", "tokens", "decode forwards", "time to first token s",
                       "total s", "tokens/s", "tokens/s after the first"],
                      [[r["paradigm"], r["size"], r["understanding"]["tokens"],
                        r["understanding"]["decode_calls"], r["understanding"]["ttft_s"],
                        r["understanding"]["median_s"], r["understanding"]["tokens_per_s"],
                        r["understanding"]["decode_tokens_per_s"]] for r in rows]))
    return "".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Seconds per image by paradigm, one bar per (batch, guidance); one panel per size."""
    from ..utils.io import atomic_path
    from ..utils.plot import _plt
    plt = _plt()
    sizes = list(dict.fromkeys(r["size"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.5 * len(sizes) + 1, 3.6), squeeze=False)
    keys = [f"b{b}_g{g}" for b in BATCHES for g in GUIDANCES]
    for ax, size in zip(axes[0], sizes):
        rs = [r for r in rows if r["size"] == size]
        w = 0.8 / len(keys)
        for j, k in enumerate(keys):
            ax.bar([i + j * w for i in range(len(rs))],
                   [r["generation"]["runs"][k]["s_per_image"] for r in rs], w,
                   label=k.replace("_g", ", guidance ").replace("b", "batch ", 1))
        ax.set_xticks([i + 0.4 - w / 2 for i in range(len(rs))],
                      [f"{r['paradigm']}\n{r['params'] / 1e6:.2f}M" for r in rs])
        ax.set_yscale("log")
        ax.set_ylabel("seconds per image")
        ax.set_title(f"size {size}")
        ax.grid(alpha=0.3, axis="y")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


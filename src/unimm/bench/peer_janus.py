"""Ours against transformers' `JanusForConditionalGeneration` on identical work and weights.

`measure(spec)` builds one Janus-compatible model with seeded random weights (the default
model's shape laid out as configs/janus_compat.toml), writes its weights once, and runs our side
and transformers' side in their own processes (bench.common.in_child), alternating for `rounds`
rounds; each loads those weights (transformers' through unimm.interop.janus) and times the same
jobs with the same protocol (warm-up, `repeats` timed runs, median and spread, one torch thread
unless told otherwise):

- image generation, guidance on, greedy: 1 prompt and `batch` prompts (left-padded, mixed
  lengths);
- answering, greedy: 1 question and `batch` questions, up to `max_new` tokens.

The children also return their outputs, so the parent checks that the greedy image codes and
answers are identical before it reports any ratio (a ratio of different work means nothing).

Each row also gives its compute floor: the job's matmul FLOPs (counted once in our eager process
with torch.utils.flop_counter; Janus does at least as many: it has no last-token-only prompt
fill) at the best fp32 matmul rate measured in our processes (bench.machine.matmul_peak). Janus's
time over that floor bounds how many times faster any implementation of the same fp32 work can
be on this machine. Next to it, the job's machine floor (`machine_floor`): its products at the
fastest rate measured on this machine for each of their shapes (small-row products run well
below the square-matmul peak) plus one read of the keys and values its attention is handed, at
the measured streaming read bandwidth; what the job would take on these kernels if nothing
else cost anything.

Our side runs twice: eagerly, and (`compile`, default on except in quick runs) with compiled
decoding steps (`TokenModel.compile_decode`, fast/decode.py: AOTInductor, no per-call guards),
whose compiles happen in the warm-up; both are compared with the same transformers run.

Spec keys (all optional): config, quick (a tiny shape and fewer prompts, for the CI smoke test),
repeats, warmup, threads, guidance, max_new, batch, rounds, compile. `peer_job` is the `unimm bench
peers` entry point.
"""

from __future__ import annotations

import random
import tempfile
import types
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..utils.machine import conditions
from .common import in_child
from .machine import gemm_seconds, matmul_peak, read_bandwidth
from .peers import pooled, ratio_row
from .timing import timeit

QUICK_SET = ["model.dim=32", "model.n_layers=1", "model.n_heads=4", "model.rope_sections=[4,0,0]"]


def _random_parts(config: str, quick: bool, seed: int = 0):
    """A Janus-compatible model with seeded random weights and its vocabulary (no tokenizers:
    the work is given as token ids)."""
    from ..model.unified import TokenModel
    from ..paradigms import build_paradigm
    from ..paradigms.sequence import Vocab
    from ..runs import RunConfig
    from ..utils.config import load_config
    cfg = load_config(RunConfig, config, QUICK_SET if quick else [])
    tok = cfg.image_tokenizer.tokenizer
    size = cfg.data.world.image_size
    grid = (size // tok.patch_size,) * 2
    v = Vocab(cfg.data.text_vocab_size, tok.codebook_size, grid)
    torch.manual_seed(seed)
    model = TokenModel(v.size, cfg.model, code_start=v.code_start,
                       code_mlp=cfg.model.code_mlp).eval()
    return types.SimpleNamespace(cfg=cfg, vocab=v, model=model,
                                 paradigm=build_paradigm("ar", v, cfg.paradigm_config),
                                 image_tok=types.SimpleNamespace(image_size=size))


def _work(v, n: int, seed: int = 0):
    """n prompts (t2i turns) and n questions (vqa turns over random images), mixed lengths."""
    from ..paradigms.base import Turn
    r = random.Random(seed)
    prompts = [Turn("t2i", [r.randrange(v.n_text) for _ in range(r.randint(12, 24))])
               for _ in range(n)]
    questions = [Turn("vqa", [r.randrange(v.n_text) for _ in range(r.randint(6, 12))],
                      [r.randrange(v.n_codes) for _ in range(v.n_image)]) for _ in range(n)]
    return prompts, questions


class _WorkRecorder(TorchDispatchMode):
    """Inside: the shapes (M, K, N) of every product by a 2-D weight (F.linear, mm, addmm,
    matmul; counted) and the bytes of keys and values handed to attention."""

    def __init__(self):
        super().__init__()
        self.gemms, self.kv_bytes = Counter(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        aten = torch.ops.aten
        if func in (aten.linear.default, aten.mm.default, aten.addmm.default,
                    aten.matmul.default):
            x, w = (args[1], args[2]) if func is aten.addmm.default else args[:2]
            if w.dim() == 2:          # batched matmuls (attention) stay with the rest
                n = w.shape[0] if func is aten.linear.default else w.shape[1]
                self.gemms[(x.numel() // x.shape[-1], x.shape[-1], n)] += 1
        elif func in (aten.scaled_dot_product_attention.default,
                      aten._scaled_dot_product_flash_attention_for_cpu.default):
            self.kv_bytes += sum(t.numel() * t.element_size() for t in args[1:3])
        return func(*args, **(kwargs or {}))


def record_work(fn, arg) -> dict:
    """One call, run once: its matmul FLOPs (torch.utils.flop_counter: mm, addmm, bmm,
    attention), its 2-D products as [M, K, N, calls], and the bytes of keys/values its attention
    calls read; the projections run as F.linear (the counter has no formula for the packed
    oneDNN op: the plain ops table, model/ops.py)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..model import ops
    with ops.plain(), FlopCounterMode(display=False) as counter, _WorkRecorder() as rec:
        fn(arg)
    return {"flops": float(counter.get_total_flops()),
            "gemms": [[*shape, n] for shape, n in sorted(rec.gemms.items())],
            "kv_bytes": rec.kv_bytes}


def _child(spec: dict) -> dict:
    """One side (spec['side'] = 'ours' | 'janus'): load the weights, time the jobs. Run in its
    own process by bench.common.in_child (which sets the thread count)."""
    from safetensors.torch import load_file

    from ..paradigms.sampling import GREEDY
    parts = _random_parts(spec["config"], spec["quick"])
    parts.model.load_state_dict(load_file(spec["weights"]))
    v, n, g = parts.vocab, spec["batch"], spec["guidance"]
    prompts, questions = _work(v, n)
    if spec["side"] in ("ours", "compiled"):
        par, model = parts.paradigm, parts.model
        if spec["side"] == "compiled":
            model.compile_decode()

        def draw(ts):
            return par.generate_images(model, ts, g, GREEDY)

        def answer(qs):
            return par.generate_text(model, qs, spec["max_new"], GREEDY)
    else:
        import transformers

        from ..interop.janus import build_janus, janus_answer, janus_generate_codes
        transformers.logging.set_verbosity_error()
        janus = build_janus(parts)
        del parts.model

        def draw(ts):
            return janus_generate_codes(janus, v, ts, g)

        def answer(qs):
            return janus_answer(janus, v, qs, spec["max_new"])
    out = {"side": spec["side"], "conditions": conditions(), "jobs": {}, "outputs": {},
           "work": {}}
    jobs = {"generate_b1": (draw, prompts[:1]), f"generate_b{n}": (draw, prompts),
            "answer_b1": (answer, questions[:1]), f"answer_b{n}": (answer, questions)}
    with torch.inference_mode():
        if spec["side"] == "ours":   # the work, counted once (untimed), and the machine's peak
            cpu = torch.device("cpu")
            out["work_profile"] = {name: record_work(fn, arg) for name, (fn, arg) in jobs.items()}
            out["flops"] = {name: w.pop("flops") for name, w in out["work_profile"].items()}
            out["peak_gflops"] = matmul_peak(cpu, torch.float32,
                                             (64, 128, 256) if spec["quick"] else
                                             (256, 512, 1024, 2048),
                                             repeats=spec["repeats"])["peak_gflops"]
            shapes = sorted({tuple(g[:3]) for w in out["work_profile"].values()
                             for g in w["gemms"]})
            out["gemm_s"] = [[*shape, t] for shape, t in gemm_seconds(shapes, cpu).items()]
            out["read_gbps"] = read_bandwidth(cpu, 16 if spec["quick"] else 256,
                                              spec["repeats"])["gb_per_s"]
        for name, (fn, arg) in jobs.items():
            res = fn(arg)
            t = timeit(lambda: fn(arg), repeats=spec["repeats"], warmup=spec["warmup"])
            if name.startswith("generate"):
                out["outputs"][name] = res.tolist()
                out["work"][name] = len(arg)                         # images
            else:
                out["outputs"][name] = res
                out["work"][name] = sum(len(a) + 1 for a in res)    # tokens, + <eos> / last step
            out["jobs"][name] = t
            print(f"  {spec['side']:5s} {name:13s} {t['median_s'] * 1e3:9.1f} ms "
                  f"(min {t['min_s'] * 1e3:.1f}, max {t['max_s'] * 1e3:.1f})", flush=True)
    return out


def machine_floor(runs: list[dict], job: str) -> dict:
    """A job's floor on this machine's own kernels and memory, from our processes' records:
    each of its 2-D products at the fastest time measured for that shape (the best over the
    processes), the rest of its counted FLOPs (attention) at the matmul peak, plus the bytes of
    keys and values its attention reads, once, at the measured streaming read bandwidth. Not a
    strict bound (a better kernel, or keys and values served from cache, would beat it), but
    the time it takes on these kernels if nothing else cost anything and nothing were read
    twice."""
    best: dict[tuple, float] = {}
    for r in runs:
        for *shape, t in r["gemm_s"]:
            best[tuple(shape)] = min(t, best.get(tuple(shape), float("inf")))
    work = runs[0]["work_profile"][job]
    gemm_s = sum(n * best[(m, k, o)] for m, k, o, n in work["gemms"])
    rest = runs[0]["flops"][job] - sum(2 * m * k * o * n for m, k, o, n in work["gemms"])
    peak, bw = max(r["peak_gflops"] for r in runs), max(r["read_gbps"] for r in runs)
    kv_s = work["kv_bytes"] / (bw * 1e9)
    kernel_s = gemm_s + max(rest, 0) / (peak * 1e9)
    return {"kernel_s": kernel_s, "kv_bytes": work["kv_bytes"], "read_gbps": bw, "kv_s": kv_s,
            "machine_s": kernel_s + kv_s}


def measure(spec: dict) -> dict:
    """Both sides in their own processes, alternating for `rounds` rounds (ours, theirs, ours,
    theirs, ...) so that a change of machine load hits both; identical outputs checked;
    ratios theirs / ours (> 1: we are faster)."""
    from safetensors.torch import save_file
    quick = bool(spec.get("quick"))
    base = {"config": spec.get("config", "configs/janus_compat.toml"), "quick": quick,
            "repeats": int(spec.get("repeats", 2 if quick else 5)),
            "warmup": int(spec.get("warmup", 1)), "threads": int(spec.get("threads", 1)),
            "guidance": float(spec.get("guidance", 3.0)),
            "max_new": int(spec.get("max_new", 8 if quick else 24)),
            "batch": int(spec.get("batch", 4 if quick else 16))}
    rounds = int(spec.get("rounds", 1 if quick else 2))
    sides = ("ours", "compiled", "janus") if spec.get("compile", not quick) else ("ours", "janus")
    parts = _random_parts(base["config"], quick)
    with tempfile.TemporaryDirectory(prefix="unimm-janus-") as tmp:
        work = Path(tmp)
        save_file({k: t.contiguous() for k, t in parts.model.state_dict().items()},
                  work / "weights.safetensors")
        base["weights"] = str(work / "weights.safetensors")
        runs = {s: [] for s in sides}
        for r in range(rounds):
            for side in sides:
                runs[side].append(in_child("unimm.bench.peer_janus:_child", {**base, "side": side},
                                           work, f"janus job, {side}, round {r + 1}"))
    ours = runs["ours"][0]
    same = {k: all(r["outputs"][k] == ours["outputs"][k] for s in sides for r in runs[s])
            for k in ours["outputs"]}
    jobs = {k: {"ours": pooled([r["jobs"] for r in runs["ours"]], k),
                "theirs": pooled([r["jobs"] for r in runs["janus"]], k),
                **({"compiled": pooled([r["jobs"] for r in runs["compiled"]], k)}
                   if "compiled" in runs else {}),
                "work": ours["work"][k], "identical_output": same[k]}
            for k in ours["jobs"]}
    # how far each side is from the machine: the job's matmul FLOPs (ours, counted; Janus does
    # at least as many) at the best fp32 matmul rate measured in our processes
    peak = max(r["peak_gflops"] for r in runs["ours"])
    for k, job in jobs.items():
        floor = ours["flops"][k] / (peak * 1e9)
        job["floor"] = {"flops": ours["flops"][k], "peak_gflops": peak, "floor_s": floor,
                        **{f"{side}_over_floor": job[side]["median_s"] / floor
                           for side in ("ours", "compiled", "theirs") if side in job},
                        **machine_floor(runs["ours"], k)}
        job["floor"].update({f"{side}_over_machine": job[side]["median_s"] / job["floor"][
            "machine_s"] for side in ("ours", "compiled", "theirs") if side in job})
    m = parts.cfg.model
    return {
        "peer": "transformers JanusForConditionalGeneration "
                f"{__import__('transformers').__version__}",
        "shape": {"dim": m.dim, "n_layers": m.n_layers, "n_heads": m.n_heads,
                  "n_codes": parts.vocab.n_codes, "n_image": parts.vocab.n_image,
                  "params": sum(p.numel() for p in parts.model.parameters())},
        "settings": {**{k: base[k] for k in ("repeats", "warmup", "threads", "guidance",
                                             "max_new", "batch", "quick", "config")},
                     "rounds": rounds},
        "weights": "seeded random initialisation (identical in both processes)",
        "identical_outputs": all(same.values()),
        "jobs": jobs,
        "conditions": {s if s != "janus" else "theirs": [r["conditions"] for r in runs[s]]
                       for s in sides},
        "bars": {"generate_speedup": 3.0, "answer_speedup": 2.0},
    }


def peer_job(spec: dict) -> dict:
    """`unimm bench peers` job (bench/peers.py PEERS["janus"]): measure() in the row format of
    the peers table; a ratio only counts (met) when the outputs were identical."""
    quick = bool(spec.get("quick"))
    shape = {k: spec[k] for k in ("config", "batch", "max_new") if spec.get(k) is not None}
    r = measure({"quick": quick, "repeats": spec.get("repeats", 5),
                 "threads": spec.get("threads", 1),
                 "rounds": spec.get("rounds", 2), **shape})
    s = r["settings"]
    rows = []
    for side, label in (("ours", ""), ("compiled", ", ours with compiled decoding, AOTInductor")):
        for name, job in r["jobs"].items():
            if side not in job:
                continue
            kind, batch = name.split("_b")
            same = "identical" if job["identical_output"] else "DIFFERENT"
            if kind == "generate":
                what = (f"image generation s/image, batch {batch}, guidance {s['guidance']:g}, "
                        f"greedy ({same} codes{label})")
                row = ratio_row(what, job[side], job["theirs"], "s/image",
                                r["bars"]["generate_speedup"], job["work"])
            else:
                what = (f"answering tokens/s, batch {batch}, greedy, up to {s['max_new']} tokens "
                        f"({same} answers{label})")
                row = ratio_row(what, job[side], job["theirs"], "tokens/s",
                                r["bars"]["answer_speedup"], job["work"])
            row["met"] = row["met"] and job["identical_output"]  # a ratio of different work: no
            fl = job["floor"]
            row["floor"] = fl
            row["what"] += (f"; compute floor {fl['floor_s'] * 1e3:.3g} ms ({fl['flops'] / 1e9:.3g} "
                            f"GFLOP at {fl['peak_gflops']:.0f} GFLOP/s): ours "
                            f"{fl[side + '_over_floor']:.2f}x it, theirs "
                            f"{fl['theirs_over_floor']:.2f}x, so at most "
                            f"{fl['theirs_over_floor']:.2f}x faster than theirs; machine "
                            f"floor {fl['machine_s'] * 1e3:.3g} ms (products at the fastest "
                            f"rate measured for each shape, {fl['kernel_s'] * 1e3:.3g} ms, + "
                            f"keys/values read once, {fl['kv_bytes'] / 1e9:.3g} GB at "
                            f"{fl['read_gbps']:.3g} GB/s, {fl['kv_s'] * 1e3:.3g} ms): ours "
                            f"{fl[side + '_over_machine']:.2f}x it, theirs "
                            f"{fl['theirs_over_machine']:.2f}x")
            rows.append(row)
    sh = r["shape"]
    return {
        "peer": "transformers JanusForConditionalGeneration",
        "version": __import__("transformers").__version__,
        "rows": rows, "detail": r,
        "setup": (f"one Janus-compatible model ({s['config']}{', tiny' if quick else ''}: D {sh['dim']}, "
                  f"L {sh['n_layers']}, H {sh['n_heads']}, {sh['n_codes']} codes, {sh['n_image']} "
                  f"per image, {sh['params']:,} parameters, seeded random weights) converted with "
                  f"unimm.interop.janus; ours: Autoregressive.generate_images / generate_text "
                  f"(eager, and with compiled decoding steps unless quick); "
                  f"theirs: JanusForConditionalGeneration.generate (image mode: its batched CFG "
                  f"rows, static cache; text mode from our input embeddings); fp32; "
                  f"{s['rounds']} processes per side, alternating"),
        "differences": ("none in the work: same weights, prompts, guidance rows and greedy "
                        "outputs (checked); Janus reads understanding images through SigLIP, our AR "
                        "run reads them as codes, so answering is compared on the code path "
                        "(Janus's language model and lm_head over our input embeddings)"),
    }

"""`unimm bench peers`: our speed next to peer libraries, in the same run, on identical work.

Three jobs (GitHub issue "Fast"), each a function `spec -> dict` in `PEERS`:

- `xtransformers`: training tokens/s of our TokenModel against x-transformers'
  `TransformerWrapper(Decoder(...))` configured as our backbone (dim, depth, heads, head dim,
  vocabulary, SwiGLU width, RMSNorm, full-head rotary, no biases, SDPA attention), on the same
  random token batches, with the same step: forward, float32 cross-entropy, backward, clipping,
  AdamW, under the same precision (bf16 autocast as our trainer, and fp32). Bar: ratio >= 1.
- `transfusion`: seconds per image of our flow sampler (`Flow.generate_images` on the default
  model's shape, random weights) against transfusion-pytorch's `Transfusion.sample_many` at the
  same width, depth, heads, latent dim and 64 latents per image, with the same number of
  velocity evaluations (Euler; transfusion's `modality_steps` = our steps + 1) and CFG on at
  the same scale. Bar: ratio >= 2.
- `janus` (bench/peer_janus.py): image generation (guidance on) and answering against
  transformers' `JanusForConditionalGeneration` holding the same weights (converted with
  unimm.interop.janus), greedy outputs checked identical. Bars: 3x and 2x.

Every ratio is "how many times faster ours is": ours / theirs in tokens/s, theirs / ours in
seconds per image.

Notable choices:
- Each implementation runs in its own process (bench.common.in_child), so neither inherits
  the other's heap, allocator cache or thread pool; threads are set explicitly in every
  process and the load average is recorded in every process.
- Protocol as in bench/timing.py: warm-up (2 training steps: the first builds AdamW's state),
  then >= 5 timed repeats (`--repeats`; `--quick` smoke runs use 1), median with min-max.
  Training ratios sit near 1, where the drift of a shared machine between two processes
  minutes apart is as large as the difference: each implementation runs in `--rounds`
  processes (default 2) in ABBA order and the repeats are pooled. The process's CPU time is
  recorded beside the wall time; their ratios agreeing says other load did not decide it.
- Identical shape is checked, not assumed: both parameter counts are recorded, and our weights
  are loaded into the x-transformers model (q/k rows permuted from our rotate-half pairing to
  its interleaved pairs) and both must give the same logits on a small input.
- Evaluations are counted, not computed from the settings: a wrapper around each ODE solver
  counts velocity calls, a hook counts transformer forwards.
- A job that fails (a peer not installed, an API change) records its error in the JSON and the
  table; the other jobs still run. Registry entries are "module:function" strings, imported
  only when their job runs.

Letters: B batch, T sequence length, V vocabulary, D width, L layers, H heads, e head dim,
p = e / 2 rotary pairs, N latents per image, d latent dim.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils.machine import conditions, describe, use_threads
from .common import import_target, in_child
from .timing import timeit

# name -> "module:function"; the function takes the job spec (quick, repeats, threads, work)
PEERS: dict[str, str] = {
    "xtransformers": "unimm.bench.peers:xtransformers_training",
    "transfusion": "unimm.bench.peers:transfusion_flow",
    "janus": "unimm.bench.peer_janus:peer_job",
}

# Training shapes. vocab 2568 = shapes_ar's 512 BPE tokens + 8 specials + 2048 codes.
TRAIN_SHAPES: dict[str, dict] = {
    "default": {"dim": 192, "n_layers": 6, "n_heads": 6, "vocab": 2568, "seq": 256, "batch": 32},
    "50m": {"dim": 576, "n_layers": 12, "n_heads": 9, "vocab": 2568, "seq": 256, "batch": 32},
    "quick": {"dim": 32, "n_layers": 2, "n_heads": 2, "vocab": 2568, "seq": 32, "batch": 4},
}
TRAIN_CASES = (("default", "bf16"), ("default", "fp32"), ("50m", "bf16"))
QUICK_TRAIN_CASES = (("quick", "bf16"),)
FLOW_BATCHES = (1, 16)
QUICK_FLOW = {"shape": {"dim": 32, "n_layers": 2, "n_heads": 2}, "steps": 2, "batches": (1, 2)}


# ---- pooling and ratios ----------------------------------------------------------------------

def pooled(rounds: list[dict], key: str) -> dict:
    """One implementation's `timeit` results (under `key`) from several processes: wall times
    pooled; CPU time as the median of the processes' medians (timeit keeps only those)."""
    wall = [w for r in rounds for w in r[key]["times_s"]]
    return {"median_s": statistics.median(wall), "min_s": min(wall), "max_s": max(wall),
            "repeats": len(wall), "times_s": wall,
            "cpu_median_s": statistics.median(r[key]["cpu_median_s"] for r in rounds)}


def ratio_row(what: str, ours: dict, theirs: dict, unit: str, bar: float, work: float) -> dict:
    """One comparison from two `timeit` results of `work` units (tokens, images) each."""
    sp = {"tokens/s": lambda t: work / t, "s/image": lambda t: t / work}[unit]
    ratio = theirs["median_s"] / ours["median_s"]               # times faster, either unit
    return {"what": what, "ours": sp(ours["median_s"]), "theirs": sp(theirs["median_s"]),
            "unit": unit, "ours_spread": ours, "theirs_spread": theirs, "ratio": ratio,
            "ratio_cpu_time": theirs["cpu_median_s"] / ours["cpu_median_s"],
            "bar": bar, "met": ratio >= bar}


# ---- x-transformers: training tokens/s ---------------------------------------------------------

def _backbone_cfg(shape: dict):
    from ..model.backbone import BackboneConfig
    return BackboneConfig(dim=shape["dim"], n_layers=shape["n_layers"], n_heads=shape["n_heads"],
                          max_seq_len=shape["seq"])


def _our_lm(shape: dict):
    from ..model.unified import TokenModel
    return TokenModel(shape["vocab"], _backbone_cfg(shape))


def _xt_lm(shape: dict, flash: bool = True):
    """x-transformers as close to our backbone as it goes. Left over: its GLU projection always
    has a bias (2 x SwiGLU width per layer); separate q, k, v matmuls instead of one fused;
    interleaved rotary pairs instead of rotate-half (same cost). `flash`: attention through
    torch's SDPA (`attn_flash`), else x-transformers' own einsum attention."""
    from x_transformers import Decoder, TransformerWrapper
    c = _backbone_cfg(shape)
    return TransformerWrapper(
        num_tokens=shape["vocab"], max_seq_len=shape["seq"],
        attn_layers=Decoder(
            dim=c.dim, depth=c.n_layers, heads=c.n_heads, attn_dim_head=c.head_dim,
            attn_flash=flash,
            rotary_pos_emb=True, rotary_emb_dim=c.head_dim,     # rotary on the whole head
            use_rmsnorm=True,
            ff_glu=True, ff_swish=True, ff_no_bias=True,        # SwiGLU
            ff_mult=(c.mlp_hidden + 0.5) / c.dim,               # int(dim * mult) = mlp_hidden
            verbose=False))


def _xt_state_from_ours(ours, shape: dict) -> dict:
    """Our TokenModel's weights as an x-transformers state dict (same function)."""
    c = _backbone_cfg(shape)
    e, p = c.head_dim, c.head_dim // 2
    pair = torch.arange(e).view(2, p).T.reshape(-1)      # theirs 2i, 2i+1 <- ours i, i + p
    rows = (torch.arange(c.n_heads)[:, None] * e + pair).reshape(-1)     # (H e,)
    sd = {"token_emb.emb.weight": ours.embed.weight, "to_logits.weight": ours.head.weight,
          "attn_layers.final_norm.g": ours.backbone.norm.weight - 1}     # theirs: g + 1
    for i, blk in enumerate(ours.backbone.blocks):
        a, f = f"attn_layers.layers.{2 * i}", f"attn_layers.layers.{2 * i + 1}"
        q, k, v = blk.attn.qkv.weight.split([c.dim] * 3)
        gate, up = blk.mlp.gate_up.weight.chunk(2)
        sd.update({f"{a}.0.0.g": blk.attn_norm.weight - 1, f"{a}.1.to_q.weight": q[rows],
                   f"{a}.1.to_k.weight": k[rows], f"{a}.1.to_v.weight": v,
                   f"{a}.1.to_out.weight": blk.attn.proj.weight,
                   f"{f}.0.0.g": blk.mlp_norm.weight - 1,
                   f"{f}.1.ff.0.proj.weight": torch.cat([up, gate]),   # theirs: up, gate
                   f"{f}.1.ff.0.proj.bias": torch.zeros(2 * c.mlp_hidden),
                   f"{f}.1.ff.2.weight": blk.mlp.down.weight})
    return sd


@torch.no_grad()
def xt_parity(shape: dict) -> float:
    """Max |logit difference| / max |logit| between our model and x-transformers carrying our
    weights (fp32, causal, one batch); raises if the weights do not cover each other."""
    from ..model.rotary import positions_1d
    torch.manual_seed(0)
    ours, xt = _our_lm(shape).eval(), _xt_lm(shape).eval()
    # unit-scale embeddings: at the init's 0.02 our RMSNorm's eps (theirs has none) alone
    # moves the output by ~2 %
    ours.embed.weight.normal_()
    sd = _xt_state_from_ours(ours, shape)
    params = {n for n, _ in xt.named_parameters()}
    if set(sd) != params:                              # every parameter, nothing else
        raise RuntimeError(f"weight mapping mismatch: missing {sorted(params - set(sd))}, "
                           f"unknown {sorted(set(sd) - params)}")
    xt.load_state_dict(sd, strict=False)               # buffers (rotary inv_freq) stay
    x = torch.randint(0, shape["vocab"], (2, min(shape["seq"], 64)))
    a = ours(x, positions_1d(*x.shape))
    return float((a - xt(x)).abs().max() / a.abs().max())


def train_child(spec: dict) -> dict:
    """Time one implementation's training step (runs in its own process)."""
    from ..model.rotary import positions_1d
    shape, impl = spec["shape"], spec["impl"]
    V, B, T = shape["vocab"], shape["batch"], shape["seq"]
    torch.manual_seed(0)
    model = _our_lm(shape) if impl == "ours" else _xt_lm(shape, impl == XT[0])
    pos = positions_1d(B, T)
    forward = (lambda x: model(x, pos)) if impl == "ours" else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=False)                 # the trainer's optimizer settings
    g = torch.Generator().manual_seed(0)                 # same batches in both processes
    batches = [torch.randint(0, V, (B, T + 1), generator=g) for _ in range(4)]
    losses = []

    def step():
        b = batches[len(losses) % len(batches)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
            logits = forward(b[:, :-1])                                      # (B, T, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), b[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())

    model.train()
    t = timeit(step, spec["repeats"], warmup=2)
    return {"impl": impl, "params": sum(p.numel() for p in model.parameters()),
            "tokens_per_step": B * T, "step": t, "tokens_per_s": B * T / t["median_s"],
            "losses": losses, "conditions": conditions()}


# x-transformers' two attention paths, each timed; ours is compared with the faster one
XT = ("x-transformers (SDPA)", "x-transformers (einsum attention)")
XT_PATH = {k: k[k.index("(") + 1:k.rindex(")")] for k in XT}   # "SDPA", ...: for labels


def xtransformers_training(spec: dict) -> dict:
    import x_transformers
    from importlib.metadata import version
    cases = QUICK_TRAIN_CASES if spec["quick"] else TRAIN_CASES
    sizes = dict.fromkeys(size for size, _ in cases)
    parity = {size: xt_parity(TRAIN_SHAPES[size]) for size in sizes}
    if max(parity.values()) > 1e-4:
        raise RuntimeError(f"x-transformers with our weights differs from our model by "
                           f"{parity} (relative): the configurations do not match")
    rows, runs = [], []
    for size, precision in cases:
        shape = TRAIN_SHAPES[size]
        r = {"ours": [], **{x: [] for x in XT}}
        for i in range(spec["rounds"]):                  # ABC CBA ...: cancels a linear drift
            for impl in list(r)[::1 if i % 2 == 0 else -1]:
                r[impl].append(in_child(
                    "unimm.bench.peers:train_child",
                    {**spec, "shape": shape, "precision": precision, "impl": impl},
                    spec["work"], f"train {impl} @ {size} {precision}, round {i + 1}"))
        impls = {k: {**rs[0], "step": pooled(rs, "step"), "processes": rs} for k, rs in r.items()}
        for v in impls.values():
            v["tokens_per_s"] = v["tokens_per_step"] / v["step"]["median_s"]
        o = impls["ours"]
        best = min(XT, key=lambda k: impls[k]["step"]["median_s"])
        x = impls[best]
        runs.append({"size": size, "precision": precision, "shape": shape, "ours": o,
                     "x-transformers": x, "x-transformers_variants": {k: impls[k] for k in XT},
                     "x-transformers_best": best, "param_difference": x["params"] - o["params"]})
        rows.append(ratio_row(f"training tokens/s, {size} (D {shape['dim']}, "
                              f"L {shape['n_layers']}, H {shape['n_heads']}, B {shape['batch']} "
                              f"x T {shape['seq']}), {precision}; theirs: the faster of its two "
                              f"attention paths, {XT_PATH[best]} ("
                              + ", ".join(f"{XT_PATH[k]} {impls[k]['tokens_per_s']:.0f} tok/s"
                                          for k in XT) + ")",
                              o["step"], x["step"], "tokens/s", 1.0, o["tokens_per_step"]))
        print(f"  ours {o['tokens_per_s']:.0f} tok/s, "
              + ", ".join(f"{k} {impls[k]['tokens_per_s']:.0f} tok/s" for k in XT)
              + f": {rows[-1]['ratio']:.2f}x against the faster "
              f"({rows[-1]['ratio_cpu_time']:.2f}x in CPU time)", flush=True)
    return {"peer": "x-transformers", "version": version("x-transformers"),
            "module": x_transformers.__name__, "rows": rows, "runs": runs,
            "parity_relative_max_diff": parity,
            "setup": "TransformerWrapper(Decoder(attn_flash on and off: SDPA or its einsum "
                     "attention, the faster counts; rotary_pos_emb with rotary_emb_dim = "
                     "head dim, use_rmsnorm, ff_glu + ff_swish + ff_no_bias, ff_mult = SwiGLU "
                     "width / dim)); step = forward, fp32 cross-entropy, backward, clip 1.0, "
                     "AdamW (foreach); both sides on the same seeded random batches",
            "differences": "x-transformers' GLU input projection keeps a bias (+2 x SwiGLU width "
                           "x layers parameters, zero in the parity check); q, k, v are three "
                           "matmuls there, one fused matmul here; rotary pairs interleaved there, "
                           "rotate-half here"}


# ---- transfusion-pytorch: flow sampling seconds per image ---------------------------------------

def _flow_parts(spec: dict):
    """The default model's config and tokenizers with paradigm flow and random weights."""
    from ..paradigms.flow import FlowConfig
    from ..pipeline import DEFAULT_RUN
    from ..tokenizers.image import load_image_tokenizer
    from ..tokenizers.text import TextTokenizer
    from ..runs import build_parts, load_config
    cfg = load_config(DEFAULT_RUN)
    model = cfg.model
    if spec.get("shape"):
        model = dataclasses.replace(model, **spec["shape"], n_kv_heads=None, mlp_hidden=None,
                                    rope_sections=None)
    flow = FlowConfig(steps=spec["steps"]) if spec.get("steps") else FlowConfig()
    cfg = dataclasses.replace(cfg, paradigm="flow", model=model, paradigm_config=flow)
    tok = DEFAULT_RUN / "tokenizer"
    torch.manual_seed(0)
    return build_parts(cfg, TextTokenizer.load(tok / "text"), load_image_tokenizer(tok / "image"))


def flow_child_ours(spec: dict) -> dict:
    """Our flow sampler at batch 1 and 16, guidance on (runs in its own process)."""
    from ..paradigms import ode
    from ..paradigms.base import format_turn
    from ..paradigms.sampling import SamplingConfig
    from ..data.worlds import make_source
    from ..train.data import Encoder
    parts = _flow_parts(spec)
    p, model, cfg = parts.paradigm, parts.model.eval(), parts.cfg
    src = make_source(cfg.data, "val")
    n = max(spec["batches"])
    turns = Encoder(parts.text_tok, parts.image_tok).turns([src.example(i, "t2i")
                                                            for i in range(n)])
    counts = {"forwards": 0, "evaluations": 0}
    model.backbone.register_forward_pre_hook(lambda *a: counts.__setitem__(
        "forwards", counts["forwards"] + 1))
    integrate = ode.integrate

    def counting(velocity, *args, **kw):                 # measured evaluations
        x, nfe = integrate(velocity, *args, **kw)
        counts["evaluations"] += nfe
        return x, nfe

    ode.integrate = counting
    sampling = SamplingConfig(temperature=1.0)           # start from noise, as transfusion
    gen = torch.Generator()
    runs = {}
    for b in spec["batches"]:
        with torch.no_grad():
            p.generate_images(model, turns[:b], spec["guidance"], sampling, gen.manual_seed(0))
            counts.update(forwards=0, evaluations=0)
            p.generate_images(model, turns[:b], spec["guidance"], sampling, gen.manual_seed(0))
            once = dict(counts)
            t = timeit(lambda: p.generate_images(model, turns[:b], spec["guidance"], sampling,
                                                 gen.manual_seed(0)), spec["repeats"], warmup=0)
        runs[f"b{b}"] = {"batch": b, **t, "s_per_image": t["median_s"] / b,
                         "velocity_evaluations": once["evaluations"],
                         "transformer_forwards": once["forwards"]}
    head = p.head(model)
    return {"impl": "ours", "params": model.num_params(), "runs": runs,
            "shape": {"dim": model.cfg.dim, "n_layers": model.cfg.n_layers,
                      "n_heads": model.cfg.n_heads, "head_dim": model.cfg.head_dim,
                      "mlp_hidden": model.cfg.mlp_hidden, "latent_dim": head.latent_dim,
                      "latents": parts.vocab.n_image, "text_vocab": parts.vocab.code_start},
            "steps": p.cfg.steps, "sampler": p.cfg.sampler,
            "prompt_lengths": [len(format_turn(parts.vocab, t, with_target=False).tokens)
                               for t in turns],
            "conditions": conditions()}


def _transfusion(shape: dict):
    from transfusion_pytorch import Transfusion
    return Transfusion(
        num_text_tokens=shape["text_vocab"], dim_latent=shape["latent_dim"],
        modality_default_shape=(shape["latents"],),
        transformer=dict(dim=shape["dim"], depth=shape["n_layers"], heads=shape["n_heads"],
                         dim_head=shape["head_dim"],
                         # int(dim * f * 2 / 3) = our SwiGLU width (their GEGLU)
                         ff_expansion_factor=(shape["mlp_hidden"] + 0.5) * 1.5 / shape["dim"]),
        odeint_kwargs=dict(method="euler"))             # default midpoint: 2 evaluations a step


def flow_child_transfusion(spec: dict) -> dict:
    """transfusion-pytorch's sample_many at our shape and evaluations (its own process)."""
    try:                                                 # one log line per sample otherwise
        from loguru import logger
        logger.disable("transfusion_pytorch")
    except ImportError:
        pass
    shape, steps = spec["ours_shape"], spec["steps"]
    torch.manual_seed(0)
    tf = _transfusion(shape).eval()
    counts = {"forwards": 0, "evaluations": 0}
    tf.transformer.register_forward_pre_hook(lambda *a: counts.__setitem__(
        "forwards", counts["forwards"] + 1))
    odeint = tf.odeint_fn

    def counting(fn, y0, times):
        def f(t, y):
            counts["evaluations"] += 1
            return fn(t, y)
        return odeint(f, y0, times)

    tf.odeint_fn = counting
    g = torch.Generator().manual_seed(0)
    # [sos] + text + [som] has our prompt's length (ours: <bos> ... <boi>)
    prompts = [torch.randint(0, shape["text_vocab"], (max(n - 2, 1),), generator=g)
               for n in spec["prompt_lengths"]]

    def sample(b):
        # Euler over `modality_steps` time points = modality_steps - 1 evaluations; max_length
        # below the modality length ends sampling right after the image
        return tf.sample_many(prompts[:b], force_modality_at_start=0, modality_steps=steps + 1,
                              cfg_scale=spec["guidance"], max_length=shape["latents"] - 1)

    runs = {}
    for b in spec["batches"]:
        with torch.no_grad():
            sample(b)
            counts.update(forwards=0, evaluations=0)
            out = sample(b)
            once = dict(counts)
            t = timeit(lambda: sample(b), spec["repeats"], warmup=0)
        n_img = sum(1 for s in out for part in s if not torch.is_tensor(part))
        if n_img != b:
            raise RuntimeError(f"transfusion sampled {n_img} images for a batch of {b}")
        runs[f"b{b}"] = {"batch": b, **t, "s_per_image": t["median_s"] / b,
                         "velocity_evaluations": once["evaluations"],
                         "transformer_forwards": once["forwards"]}
    return {"impl": "transfusion", "params": sum(p.numel() for p in tf.parameters()),
            "runs": runs, "modality_steps": steps + 1, "conditions": conditions()}


def transfusion_flow(spec: dict) -> dict:
    import transfusion_pytorch
    from importlib.metadata import version
    common = {**spec, "guidance": 1.5, "batches": list(FLOW_BATCHES)}
    if spec["quick"]:
        common.update(shape=QUICK_FLOW["shape"], steps=QUICK_FLOW["steps"],
                      batches=list(QUICK_FLOW["batches"]))
    ours = in_child("unimm.bench.peers:flow_child_ours", common, spec["work"], "flow ours")
    theirs = in_child("unimm.bench.peers:flow_child_transfusion",
                      {**common, "ours_shape": ours["shape"], "steps": ours["steps"],
                       "prompt_lengths": ours["prompt_lengths"]},
                      spec["work"], "flow transfusion")
    rows = []
    for key, o in ours["runs"].items():
        x = theirs["runs"][key]
        rows.append(ratio_row(f"flow sampling s/image, batch {o['batch']}, CFG "
                              f"{common['guidance']}, {o['velocity_evaluations']} vs "
                              f"{x['velocity_evaluations']} velocity evaluations", o, x,
                              "s/image", 2.0, o["batch"]))
        print(f"  ours {o['s_per_image']:.4f} s/image, transfusion {x['s_per_image']:.4f}: "
              f"{rows[-1]['ratio']:.2f}x ({rows[-1]['ratio_cpu_time']:.2f}x in CPU time)",
              flush=True)
    equal = all(o["velocity_evaluations"] == theirs["runs"][k]["velocity_evaluations"]
                for k, o in ours["runs"].items())
    return {"peer": "transfusion-pytorch", "version": version("transfusion-pytorch"),
            "module": transfusion_pytorch.__name__, "rows": rows,
            "ours": ours, "theirs": theirs, "equal_evaluations": equal,
            "setup": f"Transfusion(dim, depth, heads, dim_head, GEGLU width = our SwiGLU width, "
                     f"dim_latent {ours['shape']['latent_dim']}, {ours['shape']['latents']} "
                     f"latents, odeint euler), sample_many(force_modality_at_start=0, "
                     f"modality_steps={theirs['modality_steps']}, cfg_scale="
                     f"{common['guidance']}); ours: Flow.generate_images, {ours['steps']} "
                     f"{ours['sampler']} steps, guidance {common['guidance']}, temperature 1; "
                     f"fp32, no pixel decoding on either side",
            "differences": "same width, depth, heads, head dim, MLP width and latent shape, but "
                           "transfusion's blocks carry its own design (adaptive LayerNorm with "
                           "time FiLM and ada-LN-zero gates, U-Net skips, attention over layer "
                           "outputs, value gates, QK RMSNorm, score softclamp, einsum attention), "
                           "hence more parameters (ours count the token table's and head's 2 x "
                           "codes x dim image-code rows, which flow never uses); it runs the "
                           "conditional and unconditional passes one after the other, we batch "
                           "them in one forward"}


# ---- the whole benchmark -----------------------------------------------------------------------

def check_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise ValueError(f"unknown peer(s) {unknown or names}; available: {', '.join(PEERS)}")


def bench_peers(names: list[str], out_dir: Path, quick: bool = False, repeats: int = 5,
                threads: int = 1, rounds: int = 2, janus: dict | None = None) -> dict:
    """Run the named peer jobs; write peers.json and peers.md to out_dir. `rounds`: processes
    per implementation where ratios are close to 1 (training), in ABBA order."""
    from ..utils.io import write_json, write_text
    check_names(names)
    if min(threads, repeats, rounds) < 1:
        raise ValueError(f"threads, repeats and rounds must be >= 1, got {threads}, {repeats} "
                         f"and {rounds}")
    repeats, rounds = (1, 1) if quick else (repeats, rounds)
    use_threads(threads)
    start = conditions()
    jobs = {}
    with tempfile.TemporaryDirectory(prefix="unimm-peers-") as tmp:
        spec = {"quick": quick, "repeats": repeats, "rounds": rounds, "threads": threads,
                "work": tmp, **(janus or {})}
        for name in names:
            print(f"# peer {name}", flush=True)
            try:
                jobs[name] = import_target(PEERS[name])(spec)
            except Exception as e:                      # record it; the other jobs still run
                jobs[name] = {"error": f"{type(e).__name__}: {e}"}
                print(f"  {name} failed: {jobs[name]['error']}", flush=True)
    result = {"conditions": start, "conditions_end": conditions(), "threads": threads,
              "repeats": repeats, "rounds": rounds, "quick": quick, "peers": jobs}
    out_dir = Path(out_dir)
    write_json(out_dir / "peers.json", result)
    write_text(out_dir / "peers.md", markdown(result))
    return result


def _num(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.4g}"


def _cell(x: float, spread: dict | None, unit: str) -> str:
    """value [min-max] unit; the spread is of the timed call (tokens/s inverts it)."""
    s = _num(x)
    if spread:
        lo, hi = spread["min_s"] / spread["median_s"], spread["max_s"] / spread["median_s"]
        lo, hi = (x / hi, x / lo) if unit == "tokens/s" else (x * lo, x * hi)
        s += f" [{_num(lo)}-{_num(hi)}]"
    return f"{s} {unit}"


def markdown(result: dict) -> str:
    c, e = result["conditions"], result["conditions_end"]
    out = [f"# unimm bench peers\n\nEach implementation in its own process, {result['threads']} "
           f"torch thread(s), warm-up then {result['repeats']} timed repeat(s) per process "
           f"(training: {result['rounds']} processes per implementation in ABBA order, repeats "
           f"pooled): median [min-max]. {describe(c, e)}. Ratio = how many times faster ours is, in median wall time (the bar) "
           f"and in median process CPU time (less sensitive to other load on the machine)."
           f"\n\n",
           "| peer | what is compared | ours | theirs | ratio | ratio in CPU time | bar | met? |\n"
           "|---|---|---|---|---|---|---|---|\n"]
    notes = []
    for name, job in result["peers"].items():
        if "error" in job:
            out.append(f"| {name} | job failed: {job['error'][:300]} | n/a | n/a | n/a | n/a | "
                       f"n/a | no |\n")
            continue
        for r in job["rows"]:
            out.append(f"| {job['peer']} {job['version']} | {r['what']} | "
                       f"{_cell(r['ours'], r['ours_spread'], r['unit'])} | "
                       f"{_cell(r['theirs'], r['theirs_spread'], r['unit'])} | "
                       f"{r['ratio']:.2f}x | {r['ratio_cpu_time']:.2f}x | >= {r['bar']:g}x | "
                       f"{'yes' if r['met'] else 'NO'} |\n")
        notes.append(f"- **{job['peer']}**: {job['setup']}. Remaining differences: "
                     f"{job['differences']}.")
        if "runs" in job:
            notes.append("  Parameters: " + "; ".join(
                f"{r['size']}: ours {r['ours']['params']:,}, theirs "
                f"{r['x-transformers']['params']:,} ({r['param_difference']:+,})"
                for r in job["runs"] if r["precision"] == job["runs"][0]["precision"]) +
                ". With our weights loaded, x-transformers' logits match ours to " +
                ", ".join(f"{v:.1e} ({k})" for k, v in job["parity_relative_max_diff"].items()) +
                " (max |difference| / max |logit|, fp32).")
        if "theirs" in job:
            notes.append(f"  Parameters: ours {job['ours']['params']:,}, theirs "
                         f"{job['theirs']['params']:,}. Transformer forwards per call: " +
                         ", ".join(f"batch {o['batch']} ours {o['transformer_forwards']} vs "
                                   f"theirs {job['theirs']['runs'][k]['transformer_forwards']}"
                                   for k, o in job["ours"]["runs"].items()) + ".")
    if notes:
        out.append("\n" + "\n".join(notes) + "\n")
    return "".join(out)


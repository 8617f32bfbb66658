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

Modules: this one runs the benchmark (options, tokenizers, one child process per model, the
files); bench/machine.py measures the machine constants and the decode-step floor,
bench/speed_measure.py the per-model sections, bench/nocache.py holds the reference loops the
caches are timed against, bench/speed_report.py writes speed.md, speed.png and the summaries.

Notable choices:
- Weights are random: speed does not depend on what a model learned, and a random model of
  the real shape costs nothing to make. The image tokenizer is random too (the config's
  architecture; or `--tokenizer` a trained folder), the text BPE is fitted on the config's
  corpus as training does, so batches and prompts come from the real TaskStream and the real
  examples with their real lengths.
- Each (paradigm, size) runs in its own process (bench.common.in_child): no shared heap or
  allocator cache, and the process's max RSS (the CPU's peak memory, process-wide:
  interpreter, torch and model included) belongs to one model. On CUDA the peak is
  `torch.cuda.max_memory_allocated` per measurement.
- Inference runs unautocast, as Pipeline does, unless `--bf16` adds the bf16 autocast rows;
  `--compile` adds the rows with compiled decoding steps (autoregressive samplers).
- Threads are set explicitly (`--threads`, default 1) in every process; CUDA timings
  synchronise before the clock stops.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import torch

from ..utils.machine import conditions, use_threads
from .common import in_child
from .machine import machine_constants
from .speed_measure import (BATCHES, decode_bandwidth, measure_generation, measure_training,
                            measure_understanding)
from .speed_report import markdown, plot, summary
from .timing import memory_now

SIZES: dict[str, dict | None] = {   # name -> backbone shape over the config's (None = as is)
    "default": None,
    # 12 x 3.98M (attention 4 D^2 + SwiGLU 3 D 1536) + 2 x 2568 x 576 embeddings/head with
    # shapes_ar's vocabulary = 50.7M parameters; head_dim 64
    "50m": {"dim": 576, "n_layers": 12, "n_heads": 9},
}
DEVICES = ("cpu", "cuda", "auto")


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


def measure(spec: dict) -> dict:
    """Every per-model section for one (paradigm, size); runs in a child process."""
    from ..paradigms.ar import Autoregressive
    from ..paradigms.sampling import SamplingConfig
    from ..data.worlds import make_source
    from ..train.data import Encoder
    from ..train.trainer import Trainer
    use_threads(spec["threads"])
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
           "conditions": conditions(), "memory_after_build_mb": memory_now(dev)}
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
        # the same timings with compiled decoding steps (fast/decode.py); compiles happen in
        # the warm-up runs, one per (rows, cache capacity)
        model.compile_decode()
        with torch.no_grad():
            comp = measure_generation(parts, model, dev, t2i, sampling, repeats, warmup)
        comp["bandwidth"] = decode_bandwidth(parts, model, t2i, comp, spec["machine"])
        comp["compile_failed"] = getattr(model.decoder, "failed", "no fast package")
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
    use_threads(threads)
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
                print(summary(rows[-1]), flush=True)
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

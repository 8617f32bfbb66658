"""The reports of `unimm bench speed`: speed.md (one table per section), speed.png (seconds
per image by paradigm, batch and guidance) and the one-line summary printed per model."""

from __future__ import annotations

from pathlib import Path

from ..utils.machine import describe
from .speed_measure import BATCHES, GUIDANCES


def summary(r: dict) -> str:
    g, t, u = r["generation"], r["training"], r["understanding"]
    return (f"{r['paradigm']} @ {r['size']} ({r['params'] / 1e6:.2f}M): train "
            f"{t['model_only']['tokens_per_s']:.0f} tok/s (MFU {t['model_only']['mfu']:.1%}), "
            f"{g['s_per_image_b1']:.4f} s/image b1, {g['s_per_image_b16']:.4f} b16, "
            f"answer {u['tokens_per_s']:.0f} tok/s")


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
        out.append("\n### Compiled decoding steps (`TokenModel.compile_decode`, fast/decode.py)"
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

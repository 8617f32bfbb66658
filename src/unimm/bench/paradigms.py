"""`unimm bench paradigms`: every paradigm trained with the same backbone, data, tokenizer and
wall-clock budget, judged by `unimm eval`, and timed when sampling.

Each training and each evaluation runs in its own process (`python -m unimm ...`), one after
the other, so paradigms never share a core or a Python heap; the image tokenizer is trained
once and shared, so every paradigm sees the same codes. Writes `paradigms.json`,
`paradigms.md` (the table) and `paradigms.png` (quality against seconds per image) under the
output folder, plus one run folder per paradigm.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
from pathlib import Path

from .common import conditions, timeit

COLUMNS = [  # (key in a row, header, format)
    ("paradigm", "paradigm", "{}"), ("params_m", "params (M)", "{:.2f}"),
    ("steps", "steps", "{}"), ("train_tokens_per_s", "train tok/s", "{:.0f}"),
    ("vqa", "VQA", "{:.3f}"), ("caption", "caption", "{:.3f}"),
    ("t2i_full_scene", "t2i full-scene", "{:.3f}"), ("geneval", "GenEval", "{:.3f}"),
    ("edit", "edit", "{:.3f}"), ("holdout_t2i", "hold-out t2i", "{:.3f}"),
    ("fe_per_image", "FE / image", "{}"), ("s_per_image_b1", "s / image (b1)", "{:.3f}"),
    ("s_per_image_b16", "s / image (b16)", "{:.4f}"),
]


def _unimm(*args: str) -> None:
    cmd = [sys.executable, "-m", "unimm", *args]
    print("$", " ".join(cmd[2:]), flush=True)
    r = subprocess.run(cmd)
    if r.returncode:
        raise RuntimeError(f"`{' '.join(cmd[2:])}` failed with exit code {r.returncode}")


def _train_tokens_per_s(run_dir: Path) -> tuple[float, int]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    tps = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    steps = max(int(r["step"]) for r in rows)
    return (statistics.median(tps[1:] or tps) if tps else float("nan")), steps


def _sampling_speed(run_dir: Path, repeats: int) -> dict:
    import torch

    from ..pipeline import Pipeline
    pipe = Pipeline.load(run_dir, device="cpu")
    out = {"fe_per_image": pipe.paradigm.function_evaluations(),
           "params_m": pipe.model.num_params() / 1e6}
    for b in (1, 16):
        prompts = ["a small red circle on the left and a large blue square at the bottom"] * b
        with torch.inference_mode():
            t = timeit(lambda: pipe.draw(prompts, seed=0), repeats=repeats)
        out[f"s_per_image_b{b}"] = t["median_s"] / b
        out[f"s_per_image_b{b}_spread"] = [t["min_s"] / b, t["max_s"] / b]
    return out


def bench_paradigms(config: Path, paradigms: list[str], minutes: float, out_dir: Path,
                    overrides: list[str], tokenizer: Path | None = None, quick: bool = False,
                    repeats: int = 5) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = [x for o in overrides for x in ("--set", o)]
    rows = []
    for name in paradigms:
        run = out_dir / name
        # one image tokenizer for all: the first run trains it (before its clock starts)
        tok = ["--set", f"image_tokenizer_path={tokenizer}"] if tokenizer else []
        _unimm("train", str(config), "-o", str(run), "--minutes", str(minutes), "--no-eval",
               "--set", f"paradigm={name}", "--set", "train.eval_every=0", *tok, *sets)
        tokenizer = tokenizer or run / "tokenizer" / "image"
        _unimm("eval", "--run", str(run), "--split", "test", "-o", str(run / "eval.json"),
               *(["--quick"] if quick else []))
        m = json.loads((run / "eval.json").read_text())["metrics"]
        tps, steps = _train_tokens_per_s(run)
        row = {"paradigm": name, "steps": steps, "train_tokens_per_s": tps,
               "vqa": m.get("vqa/overall"), "caption": m.get("caption/scene_correct"),
               "t2i_full_scene": m.get("t2i/full_scene"), "geneval": m.get("geneval/overall"),
               "edit": m.get("edit/success"), "holdout_t2i": m.get("holdout/t2i_pair_drawn"),
               **{k: v for k, v in m.items() if k.startswith(("geneval/", "vqa/kind/"))},
               **_sampling_speed(run, repeats)}
        rows.append(row)
        print({k: row[k] for k, _, _ in COLUMNS}, flush=True)
    result = {"conditions": conditions(), "config": str(config), "minutes": minutes,
              "overrides": overrides, "quick_eval": quick, "rows": rows}
    (out_dir / "paradigms.json").write_text(json.dumps(result, indent=2))
    (out_dir / "paradigms.md").write_text(markdown(result))
    plot(rows, out_dir / "paradigms.png", minutes)
    return result


def markdown(result: dict) -> str:
    c = result["conditions"]
    head = (f"Budget {result['minutes']} min of training per paradigm, config "
            f"`{result['config']}` {' '.join(result['overrides'])}; {c['machine']}, "
            f"{c['cpu_count']} cores, {c['torch_threads']} torch threads, load "
            f"{c['loadavg_1_5_15']}, {c['date']}.\n\n")
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in result["rows"]:
        cells = []
        for k, _, f in COLUMNS:
            v = r.get(k)
            cells.append("n/a" if v is None else f.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    from ..utils.io import atomic_path
    from ..utils.plot import _plt
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, label in ((axes[0], "t2i_full_scene", "text-to-image full-scene"),
                           (axes[1], "vqa", "VQA")):
        for r in rows:
            ax.scatter(r["s_per_image_b1"], r[key] or 0.0, s=40)
            ax.annotate(r["paradigm"], (r["s_per_image_b1"], r[key] or 0.0), fontsize=8,
                        xytext=(4, 2), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("seconds per image (batch 1)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"paradigms at {minutes} min of training each")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

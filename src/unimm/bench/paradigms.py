"""`unimm bench paradigms`: every paradigm trained with the same backbone, data, tokenizer and
wall-clock budget, judged by `unimm eval`, and timed when sampling.

Each training and each evaluation runs in its own process (`python -m unimm ...`); with
`jobs = 1` one after the other, so paradigms never share a core or a Python heap, with
`jobs = N` N at a time (each at the config's thread count; on a machine with N free cores every
paradigm still gets the same share of it). Sampling is always timed afterwards, one paradigm at a
time in this process. The image tokenizer is trained once and shared, so every paradigm sees the
same codes.

`init = RUN` warm-starts every paradigm (`ar` included) from one finished run's weights and
tokenizers (`train.init_from`): the budget is then "that shared backbone + N minutes each", the
way Show-o, Janus and MMaDA start from one pre-trained language model. Modules a paradigm adds
(flow's latent projections, the decoupled ViT and aligner) keep their own initialisation.

Writes `paradigms.json`, `paradigms.md` (the table) and `paradigms.png` (quality against
seconds per image) under the output folder, plus one run folder per paradigm (with its
`train.log` and `eval.log` when jobs > 1).
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from ..utils.machine import conditions
from .timing import timeit

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
    _run_all([list(args)], jobs=1, logs=[None])


def _run_all(commands: list[list[str]], jobs: int, logs: list[Path | None]) -> None:
    """Run `python -m unimm ARGS` for each of `commands`, at most `jobs` at a time; a command
    with a log path writes its output there (parallel output would interleave)."""
    pending = list(zip(commands, logs))
    running: list[tuple[subprocess.Popen, list[str], object]] = []
    failed = []
    while pending or running:
        while pending and len(running) < jobs:
            args, log = pending.pop(0)
            cmd = [sys.executable, "-m", "unimm", *args]
            print("$", " ".join(cmd[2:]), *(["  >", str(log)] if log else []), flush=True)
            fh = open(log, "w") if log else None
            running.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT if fh
                                             else None), args, fh))
        time.sleep(0.2)
        for item in [r for r in running if r[0].poll() is not None]:
            proc, args, fh = item
            running.remove(item)
            if fh:
                fh.close()
            if proc.returncode:
                failed.append(f"`{' '.join(args)}` failed with exit code {proc.returncode}")
    if failed:
        raise RuntimeError("; ".join(failed))


def _train_tokens_per_s(run_dir: Path) -> tuple[float, int]:
    """Median logged training tokens/s and the steps trained (the checkpoint's count; the
    metrics log has every log_every-th step only)."""
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    tps = [float(r["tokens_per_s"]) for r in rows if r.get("tokens_per_s")]
    steps = max(int(r["step"]) for r in rows)
    state = run_dir / "ckpt" / "state.json"
    if state.is_file():
        steps = json.loads(state.read_text())["step"]
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
                    repeats: int = 5, init: Path | None = None, jobs: int = 1,
                    with_start: bool = False) -> dict:
    """Train `paradigms` for `minutes` each (from `init` when given), evaluate each on test and
    time its sampling. `with_start` also evaluates the `init` run itself, untrained here, as a
    row named `start (PARADIGM)`: what every warm-started paradigm began from."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if init is not None:
        overrides = [*overrides, f"train.init_from={init}"]
    sets = [x for o in overrides for x in ("--set", o)]

    def train(name: str) -> list[str]:
        tok = ["--set", f"image_tokenizer_path={tokenizer}"] if tokenizer else []
        return ["train", str(config), "-o", str(out_dir / name), "--minutes", str(minutes),
                "--no-eval", "--set", f"paradigm={name}", "--set", "train.eval_every=0",
                *tok, *sets]

    def log(name: str, what: str) -> Path | None:
        return out_dir / name / f"{what}.log" if jobs > 1 else None

    names = list(paradigms)
    if tokenizer is None and init is None and names:
        # one image tokenizer for all: the first run trains it (before its clock starts), alone
        _unimm(*train(names[0]))
        tokenizer, names = out_dir / names[0] / "tokenizer" / "image", names[1:]
    for name in names:
        (out_dir / name).mkdir(parents=True, exist_ok=True)
    _run_all([train(n) for n in names], jobs, [log(n, "train") for n in names])
    # (run dir, where its eval goes, row label, trained here?)
    evals = [(out_dir / n, out_dir / n / "eval.json", n, True) for n in paradigms]
    if with_start and init is not None:
        start = json.loads((Path(init) / "config.json").read_text())["config"]["paradigm"]
        (out_dir / "start").mkdir(parents=True, exist_ok=True)
        evals.append((Path(init), out_dir / "start" / "eval.json", f"start ({start})", False))
    _run_all([["eval", "--run", str(run), "--split", "test", "-o", str(dest),
               *(["--quick"] if quick else [])] for run, dest, _, _ in evals], jobs,
             [dest.with_suffix(".log") if jobs > 1 else None for _, dest, _, _ in evals])
    rows = []
    for run, dest, name, trained in evals:
        m = json.loads(dest.read_text())["metrics"]
        tps, steps = _train_tokens_per_s(run) if trained else (None, 0)
        cfg = json.loads((run / "config.json").read_text())["config"]
        row = {"paradigm": name, "run": str(run), "steps": steps, "train_tokens_per_s": tps,
               "settings": cfg.get(cfg["paradigm"], {}) if trained else {},
               "vqa": m.get("vqa/overall"), "caption": m.get("caption/scene_correct"),
               "t2i_full_scene": m.get("t2i/full_scene"), "geneval": m.get("geneval/overall"),
               "edit": m.get("edit/success"), "holdout_t2i": m.get("holdout/t2i_pair_drawn"),
               **{k: v for k, v in m.items() if k.startswith(("geneval/", "vqa/kind/"))},
               **_sampling_speed(run, repeats)}
        rows.append(row)
        print({k: row[k] for k, _, _ in COLUMNS}, flush=True)
    result = {"conditions": conditions(), "config": str(config), "minutes": minutes,
              "init": str(init) if init else None, "jobs": jobs,
              "overrides": overrides, "quick_eval": quick, "with_start": with_start,
              "rows": rows}
    _write(result, out_dir)
    return result


def _write(result: dict, out_dir: Path) -> None:
    from ..utils.io import write_json, write_text
    write_json(out_dir / "paradigms.json", result)
    write_text(out_dir / "paradigms.md", markdown(result))
    plot(result["rows"], out_dir / "paradigms.png", result["minutes"])


def retime_paradigms(out_dir: Path, repeats: int = 5) -> dict:
    """Time sampling again for every row of the bench in `out_dir` (its runs as they are now;
    e.g. when something else shared the machine during the first timing), one run at a time
    in this process. The first timings stay in each row as `sampling_first_timing`."""
    out_dir = Path(out_dir)
    path = out_dir / "paradigms.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: --retime needs an earlier "
                                f"`unimm bench paradigms -o {out_dir}`")
    result = json.loads(path.read_text())
    for row in result["rows"]:
        run = row.get("run") or (result["init"] if row["paradigm"].startswith("start (")
                                 else str(out_dir / row["paradigm"]))
        row["run"] = run
        row.setdefault("sampling_first_timing",
                       {k: v for k, v in row.items() if k.startswith("s_per_image")})
        row.update(_sampling_speed(Path(run), repeats))
        print({k: row[k] for k, _, _ in COLUMNS}, flush=True)
    result["retimed"] = {"conditions": conditions(), "repeats": repeats}
    _write(result, out_dir)
    return result


def markdown(result: dict) -> str:
    c = result["conditions"]
    start = (f"warm-started from `{result['init']}`, then " if result.get("init") else "")
    head = (f"Budget: {start}{result['minutes']} min of training per paradigm "
            f"({result.get('jobs', 1)} at a time), config "
            f"`{result['config']}` {' '.join(result['overrides'])}; {c['machine']}, "
            f"{c['cpu_count']} cores, {c['torch_threads']} torch threads, load "
            f"{c['loadavg_1_5_15']}, {c['date']}.\n\n")
    if result.get("retimed"):
        rc = result["retimed"]["conditions"]
        head += (f"Sampling re-timed (`--retime`, median of {result['retimed']['repeats']}) "
                 f"at load {rc['loadavg_1_5_15']}, {rc['date']}; the first timings are in "
                 "paradigms.json as `sampling_first_timing`.\n\n")
    lines = ["| " + " | ".join(h for _, h, _ in COLUMNS) + " |",
             "|" + "|".join("---" for _ in COLUMNS) + "|"]
    for r in result["rows"]:
        cells = []
        for k, _, f in COLUMNS:
            v = r.get(k)
            cells.append("n/a" if v is None else f.format(v))
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n" + _details(result["rows"])


def _details(rows: list[dict]) -> str:
    """Per-paradigm GenEval categories, VQA kinds and the paradigm's own settings."""
    def table(prefix: str, title: str) -> str:
        keys = sorted({k for r in rows for k in r if k.startswith(prefix)})
        if not keys:
            return ""
        out = [f"\n{title}\n", "| paradigm | " + " | ".join(k[len(prefix):] for k in keys) + " |",
               "|" + "|".join("---" for _ in range(len(keys) + 1)) + "|"]
        out += ["| " + " | ".join([r["paradigm"]] + [
            "n/a" if r.get(k) is None else f"{r[k]:.3f}" for k in keys]) + " |" for r in rows]
        return "\n".join(out) + "\n"
    text = table("geneval/", "GenEval-style categories (test suite, in-distribution):")
    text += table("vqa/kind/", "VQA per question kind:")
    sets = [f"- `{r['paradigm']}`: " + ", ".join(f"{k} = {v}" for k, v in r["settings"].items()
                                                 if not isinstance(v, dict))
            for r in rows if r.get("settings")]
    if sets:
        text += "\nEach paradigm's own settings (its config section):\n\n" + "\n".join(sets) + "\n"
    return text


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    """Quality against seconds per image: filled at batch 1, hollow at batch 16 (per image)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ..utils.io import atomic_path
    from ..utils.plot import _plt
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, key, label in ((axes[0], "t2i_full_scene", "text-to-image full-scene"),
                           (axes[1], "vqa", "VQA")):
        for i, r in enumerate(rows):
            y, c = r[key] or 0.0, colors[i % len(colors)]
            xs = [r["s_per_image_b1"], r.get("s_per_image_b16")]
            if xs[1] is not None:
                ax.plot(xs, [y, y], color=c, lw=0.8, alpha=0.6)
                ax.scatter(xs[1], y, s=40, facecolors="none", edgecolors=c)
            ax.scatter(xs[0], y, s=40, color=c)
            ax.annotate(r["paradigm"], (xs[0], y), fontsize=8, xytext=(4, 2),
                        textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds per image (filled: batch 1, hollow: batch 16)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle(f"paradigms at {minutes} min of training each")
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)

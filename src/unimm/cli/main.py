"""`unimm` command line: thin adapters over the Python API.

User errors (bad images, configs, manifests, options, and usage errors such as an unknown
option or a value of the wrong type) print one line, `unimm: error: ...`, and exit with 2;
set UNIMM_DEBUG=1 to see tracebacks.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="unimm: unified multimodal models that see and draw, judged exactly.")
data_app = typer.Typer(no_args_is_help=True, help="Built-in datasets and your own manifests.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: print numbers and write them to results/.")
app.add_typer(bench_app, name="bench")
convert_app = typer.Typer(no_args_is_help=True,
                          help="Convert runs to and from other libraries' formats.")
app.add_typer(convert_app, name="convert")


def _user_errors() -> tuple[type[BaseException], ...]:
    # All our user-facing errors subclass ValueError (ImageError, ManifestError, JudgeError,
    # ConfigError, RunError, CheckpointError, TokenizerFileError, InputError).
    return (ValueError, FileExistsError, FileNotFoundError)


RUN_HELP = ("Run folder, or a released checkpoint folder in transformers' layout (Janus, "
            "Emu3); default: the model that ships with the package.")
DTYPE_HELP = "fp32 | bf16 | fp16: a released checkpoint's weights (default fp32)."
SIZE_HELP = ("Side in pixels of the images a released checkpoint draws, where its family draws "
             "at several (Emu3).")


PRECISION_HELP = ("fp32 | bf16: sampling precision instead of the run's eval.precision (bf16: "
                  "bf16 autocast, and with --compile the steps compute in bf16; outputs may "
                  "differ from fp32).")


def _pipe(run: Optional[Path], compile: bool = False, precision: Optional[str] = None,
          dtype: Optional[str] = None, image_size: Optional[int] = None):
    from ..pipeline import Pipeline
    return Pipeline.load(run, compile=compile, precision=precision, dtype=dtype,
                         image_size=image_size)


def _save_images(images, out: Path) -> list[Path]:
    from ..data.images import save_png
    if len(images) == 1:
        return [save_png(images[0], out)]
    return [save_png(im, out.with_name(f"{out.stem}_{k}{out.suffix or '.png'}"))
            for k, im in enumerate(images)]


def _echo_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2))


# ----------------------------------------------------------------------------------------------
# data

@data_app.command("preview")
def data_preview(
    n: int = typer.Option(16, "--n", min=1, max=256, help="Number of examples."),
    out: Path = typer.Option(Path("grid.png"), "-o", "--out", help="Output PNG."),
    dataset: str = typer.Option("shapes", help="shapes | digits"),
    split: str = typer.Option("train", help="train | val | test"),
    task: str = typer.Option("caption", help="caption | vqa | t2i | edit (shapes)"),
    image_size: int = typer.Option(32, help="Image side in pixels (shapes: 32..256)."),
    start: int = typer.Option(0, min=0, help="First example index."),
):
    """Write a captioned grid of examples that a person can look at."""
    from ..data import preview
    path = preview.preview_grid(dataset, split, task, n, out, image_size, start)
    typer.echo(f"wrote {path}")


@data_app.command("export")
def data_export(
    out: Path = typer.Option(..., "-o", "--out", help="Folder to create (PNG files + manifest.jsonl)."),
    dataset: str = typer.Option("shapes", help="shapes | digits"),
    split: str = typer.Option("test", help="train | val | test"),
    n: Optional[int] = typer.Option(None, "--n", min=1, help="Scenes to export (shapes: required; digits: all by default)."),
    image_size: int = typer.Option(32, help="Image side in pixels."),
    holdout: str = typer.Option("generation", help="Hold-out mode for the train split: generation | strict | none."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty output folder."),
):
    """Write a built-in split as PNG files + a JSONL manifest (reads back identically)."""
    from ..data.splits import WorldConfig
    from ..data.worlds import DataConfig, make_world
    world = make_world(DataConfig(dataset=dataset,
                                  world=WorldConfig(image_size=image_size, holdout=holdout)))
    path = world.export(split, out, n=n, overwrite=force)
    typer.echo(f"wrote {path}")


@data_app.command("check")
def data_check(manifest_path: Path = typer.Argument(..., help="A JSONL manifest.")):
    """Validate a manifest: every bad record is reported with its line number."""
    from ..data.manifest import load_manifest
    recs = load_manifest(manifest_path)
    n_cap = sum(r.caption is not None for r in recs)
    n_conv = sum(bool(r.conversations) for r in recs)
    n_edit = sum(r.edit_instruction is not None for r in recs)
    typer.echo(f"{manifest_path}: {len(recs)} valid records ({n_cap} with captions, "
               f"{n_conv} with conversations, {n_edit} with edits)")


# ----------------------------------------------------------------------------------------------
# judge

@app.command("judge")
def judge_cmd(
    images: list[Path] = typer.Argument(None, help="Image files to parse into scenes."),
    selftest: bool = typer.Option(False, "--selftest", help="Judge fresh clean and perturbed test renders."),
    n: int = typer.Option(2000, "--n", min=10, help="Self-test: number of scenes."),
    image_size: int = typer.Option(32, help="Self-test: image side."),
    seed: Optional[int] = typer.Option(None, help="Self-test: which test scenes (random if omitted)."),
):
    """Parse images back into scenes (objects with shape, colour, size, cell)."""
    if selftest:
        from ..data.shapes_selftest import selftest as run
        _echo_json(run(n, image_size, seed))
        return
    if not images:
        raise ValueError("give one or more image files, or --selftest")
    from ..data.text import caption
    from ..data.shapes_judge import judge
    for p in images:
        scene = judge(p)
        d = scene.to_dict()
        d["caption"] = caption(scene)
        d["file"] = str(p)
        _echo_json(d)


# ----------------------------------------------------------------------------------------------
# training

@app.command("train")
def train_cmd(
    config: Path = typer.Argument(..., help="A TOML run config (see configs/)."),
    minutes: Optional[float] = typer.Option(None, min=0, help="Wall-clock budget (overrides train.minutes)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set train.lr=1e-3"),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="Run folder (default runs/<name>)."),
    fresh: bool = typer.Option(False, "--fresh", help="Refuse to resume: the run folder must be new."),
    evaluate_after: bool = typer.Option(True, "--eval/--no-eval", help="Evaluate on test at the end."),
):
    """Train a model (resumes from the run folder's checkpoint when there is one)."""
    from ..runs import RunConfig, has_tokenizers
    from ..train.tokenizer import prepare_tokenizers
    from ..train.trainer import Trainer
    from ..utils.config import load_config
    cfg = load_config(RunConfig, config, set_)
    run_dir = out or Path("runs") / cfg.name
    if fresh and (run_dir / "ckpt").exists():
        raise FileExistsError(f"{run_dir} already holds a checkpoint; drop --fresh to resume it")
    _check_resume_config(run_dir, cfg)
    if not has_tokenizers(run_dir):
        prepare_tokenizers(cfg, run_dir)          # copied, or trained: the run's first step
    tr = Trainer(cfg, run_dir)
    if tr.resume():
        typer.echo(f"resuming {run_dir} at step {tr.step}")
    r = tr.fit(minutes)
    typer.echo(f"trained to step {r['step']} in {r['elapsed_s'] / 60:.1f} min -> {run_dir}")
    if evaluate_after:
        _run_eval(run_dir, "test", quick=False, out=run_dir / "eval.json")


def _check_resume_config(run_dir: Path, cfg) -> None:
    from ..runs import load_config as load_run_config
    from ..utils.config import to_dict
    if (run_dir / "config.json").is_file() and (run_dir / "ckpt").exists():
        old = to_dict(load_run_config(run_dir))
        new = to_dict(cfg)
        diff = sorted(k for k in old.keys() | new.keys()
                      if old.get(k) != new.get(k) and k not in ("train", "eval", "name"))
        if diff:
            raise ValueError(f"{run_dir} was trained with a different config ({', '.join(diff)} "
                             "differ); use another --out folder or --set the same values")


@app.command("train-tokenizer")
def train_tokenizer_cmd(
    config: Path = typer.Argument(..., help="A TOML tokenizer config (e.g. configs/tokenizer.toml)."),
    out: Path = typer.Option(Path("runs/tokenizer"), "-o", "--out"),
    minutes: Optional[float] = typer.Option(None, min=0, help="Wall-clock budget."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key."),
    dataset: str = typer.Option("shapes", help="shapes | digits"),
):
    """Train an image tokenizer; writes it, metrics.json and recon.png into --out."""
    from ..data.splits import WorldConfig
    from ..data.worlds import DataConfig, make_world
    from ..runs import TokenizerTrainConfig
    from ..train.tokenizer import train_image_tokenizer
    from ..utils.config import load_config
    cfg = load_config(TokenizerTrainConfig, config, set_)
    world = make_world(DataConfig(dataset=dataset,
                                  world=WorldConfig(image_size=cfg.tokenizer.image_size)))
    m = train_image_tokenizer(cfg, out, minutes=minutes, world=world)
    _echo_json(m)


@app.command("train-encoder")
def train_encoder_cmd(
    config: Path = typer.Argument(..., help="A TOML encoder config (e.g. configs/encoder.toml)."),
    out: Path = typer.Option(..., "-o", "--out", help="Folder to create (new or empty)."),
    minutes: Optional[float] = typer.Option(None, min=0, help="Wall-clock budget (overrides minutes)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set lr=1e-3"),
):
    """Train the semantic image encoder contrastively (for paradigm=decoupled); writes it and
    metrics.json into --out and prints the val retrieval accuracy."""
    from ..train.contrastive import ContrastiveConfig, train_encoder
    from ..utils.config import load_config
    cfg = load_config(ContrastiveConfig, config, set_)
    m = train_encoder(cfg, out, minutes=minutes)
    _echo_json({"val": m["val"], "steps": m["steps"], "train_seconds": m["train_seconds"],
                "out": str(out)})


# ----------------------------------------------------------------------------------------------
# conversion

def _janus():
    try:
        from ..interop import janus
        import transformers  # noqa: F401
    except ImportError:
        raise FileNotFoundError("converting to transformers' Janus needs transformers: "
                                "pip install 'unimm[peers]'") from None
    return janus


@convert_app.command("to-janus")
def to_janus_cmd(
    out: Path = typer.Argument(..., help="New folder for the transformers Janus checkpoint."),
    run: Optional[Path] = typer.Option(None, help="A Janus-compatible run (configs/janus_compat.toml)."),
):
    """Write a run as transformers' JanusForConditionalGeneration (save_pretrained folder)."""
    path = _janus().to_janus(run, out)
    typer.echo(f"wrote {path} (load with JanusForConditionalGeneration.from_pretrained)")


@convert_app.command("from-janus")
def from_janus_cmd(
    janus_dir: Path = typer.Argument(..., help="A folder written by `unimm convert to-janus`."),
    out: Path = typer.Argument(..., help="New run folder."),
):
    """Turn a transformers Janus folder (with our config and tokenizers under unimm/) back
    into a run."""
    path = _janus().from_janus(janus_dir, out)
    typer.echo(f"wrote {path}")


@convert_app.command("janus-original")
def janus_original_cmd(
    src: Path = typer.Argument(..., help="DeepSeek's original Janus / Janus-Pro folder "
                               "(config.json of model_type multi_modality, pytorch_model*.bin)."),
    out: Path = typer.Argument(..., help="New folder in transformers' layout."),
    shard_gb: float = typer.Option(5.0, min=0.1, help="Largest safetensors shard, in GiB."),
):
    """Rewrite an original Janus checkpoint in transformers' layout, which `--run`, `serve`
    and transformers' from_pretrained load. Reads .bin shards with torch.load(weights_only=
    True) only (tensors, no code); writes safetensors."""
    from ..interop.janus_original import convert
    path = convert(src, out, shard_gb)
    typer.echo(f"wrote {path} (unimm ask/generate/serve --run {path})")


# ----------------------------------------------------------------------------------------------
# inference

@app.command("caption")
def caption_cmd(image: Path = typer.Argument(...),
                run: Optional[Path] = typer.Option(None, help=RUN_HELP),
                dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP)):
    """Describe an image."""
    typer.echo(_pipe(run, dtype=dtype).caption(image))


@app.command("ask")
def ask_cmd(image: Path = typer.Argument(...), question: str = typer.Argument(...),
            run: Optional[Path] = typer.Option(None, help=RUN_HELP),
            dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP)):
    """Answer a question about an image."""
    typer.echo(_pipe(run, dtype=dtype).ask(image, question))


@app.command("generate")
def generate_cmd(
    prompt: str = typer.Argument(...),
    out: Path = typer.Option(Path("out.png"), "-o", "--out", help="PNG path (n > 1: out_0.png, ...)."),
    n: int = typer.Option(1, "--n", min=1, max=64),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance scale."),
    seed: Optional[int] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the run's choice)."),
    top_k: Optional[int] = typer.Option(None), top_p: Optional[float] = typer.Option(None),
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help=SIZE_HELP),
):
    """Draw an image from a prompt."""
    imgs = _pipe(run, dtype=dtype, image_size=image_size).generate(prompt, n=n, guidance=guidance, seed=seed, temperature=temperature,
                               top_k=top_k, top_p=top_p)
    for p in _save_images(imgs, out):
        typer.echo(f"wrote {p}")


@app.command("edit")
def edit_cmd(
    image: Path = typer.Argument(...), instruction: str = typer.Argument(...),
    out: Path = typer.Option(Path("edited.png"), "-o", "--out"),
    guidance: Optional[float] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    temperature: Optional[float] = typer.Option(None, help="0 = greedy (default: the run's choice)."),
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
):
    """Edit an image following an instruction."""
    img = _pipe(run, dtype=dtype).edit(image, instruction, guidance=guidance, seed=seed, temperature=temperature)
    for p in _save_images([img], out):
        typer.echo(f"wrote {p}")


@app.command("eval")
def eval_cmd(
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    split: str = typer.Option("test", help="val | test"),
    quick: bool = typer.Option(False, help="Use a quarter of the items."),
    out: Optional[Path] = typer.Option(None, "-o", "--out", help="JSON path (default <run>/eval.json)."),
    compile: bool = typer.Option(False, "--compile", help="Compiled token-by-token decoding "
                                 "(same greedy outputs; about a minute of compiling first)."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    geneval_export: Optional[Path] = typer.Option(None, help="Instead: write GenEval's folder "
                                                  "layout (metadata.jsonl + samples/NNNN.png "
                                                  "per prompt) to score elsewhere."),
    prompts: Optional[Path] = typer.Option(None, help="GenEval metadata JSONL for --geneval-"
                                           "export (e.g. the official evaluation_metadata."
                                           "jsonl; default: ours, same format)."),
    images_per_prompt: int = typer.Option(4, min=1, max=64, help="--geneval-export images "
                                          "per prompt."),
    limit: Optional[int] = typer.Option(None, min=1, help="--geneval-export: first N prompts."),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help=SIZE_HELP),
):
    """Evaluate a run: a table on screen, JSON + sample PNGs on disk; or export GenEval's
    layout for any run or released checkpoint (--geneval-export)."""
    from ..pipeline import default_run_dir
    if geneval_export is not None:
        from ..eval.geneval_export import export
        pipe = _pipe(run, compile, precision, dtype, image_size)
        path = export(pipe, geneval_export, images_per_prompt, prompts, limit=limit)
        typer.echo(f"wrote {path} (score it with GenEval's evaluation/evaluate_images.py)")
        return
    run_dir = run or default_run_dir()
    _run_eval(run_dir, split, quick, out or Path(run_dir) / f"eval_{split}.json", compile,
              precision)


def _run_eval(run_dir: Path, split: str, quick: bool, out: Path, compile: bool = False,
              precision: Optional[str] = None) -> dict:
    from rich.console import Console
    from rich.table import Table

    from ..eval.evaluate import evaluate
    from ..pipeline import Pipeline
    from ..utils.io import write_json
    from ..utils.machine import conditions
    if split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {split!r}")
    pipe = Pipeline.load(run_dir, compile=compile, precision=precision)
    r = evaluate(pipe, split, quick=quick, samples_dir=out.parent)
    table = Table(title=f"unimm eval: {run_dir} ({split})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in r.items():
        table.add_row(k, f"{v:.3f}")
    Console().print(table)
    write_json(out, {"run": str(run_dir), "split": split, "quick": quick, "metrics": r,
                     "compile": compile, "precision": pipe.precision,
                     "conditions": conditions()})
    typer.echo(f"wrote {out}")
    return r


# ----------------------------------------------------------------------------------------------
# bench

@bench_app.command("world")
def bench_world_cmd(
    n: int = typer.Option(20000, "--n", min=100, help="Scenes per timed repeat."),
    repeats: int = typer.Option(5, min=1, help="Timed repeats (after one warm-up)."),
    image_size: int = typer.Option(32, help="Image side."),
    out: Path = typer.Option(Path("results/bench_world.json"), "-o", "--out"),
):
    """Scenes rendered per second (one core), examples per second, judge speed."""
    from ..bench.world import bench_world
    from ..utils.io import write_json
    r = bench_world(n, repeats, image_size)
    write_json(out, r)
    _echo_json(r)


@bench_app.command("decoding")
def bench_decoding_cmd(
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    n_t2i: int = typer.Option(150, min=1), n_edit: int = typer.Option(100, min=0, help="0 skips editing."),
    n_geneval: int = typer.Option(20, min=0, help="GenEval-style prompts per category (0 skips them)."),
    vary: list[str] = typer.Option([], "--vary", help="KEY=V1,V2: also sweep one of the run's "
                                   "paradigm sampler settings (e.g. confidence_noise=0,3,10 for "
                                   "masked / mmada, steps=10,20 for flow); repeatable, crossed."),
    guidance: str = typer.Option("", help="Comma-separated scales: greedy decoding at these "
                                 "instead of the standard sampling settings."),
    seed: int = typer.Option(0, help="Sampling seed (the same for every row)."),
    out: Path = typer.Option(Path("results/bench_decoding.json"), "-o", "--out"),
):
    """Image-sampling settings (greedy / temperature / nucleus, guidance, the paradigm's own
    sampler settings) measured on val; JSON + a Markdown table next to it."""
    from ..bench.decoding import bench_decoding, markdown, parse_vary
    from ..paradigms.sampling import MAX_GUIDANCE
    from ..utils.io import write_json, write_text
    scales = None
    if guidance.strip():
        try:
            scales = [float(g) for g in guidance.split(",") if g.strip()]
        except ValueError:
            raise ValueError(f"--guidance {guidance!r}: expected comma-separated numbers "
                             "such as 1,1.5,3") from None
        if not scales or not all(0 <= g <= MAX_GUIDANCE for g in scales):
            raise ValueError(f"--guidance {guidance!r}: scales must lie in [0, {MAX_GUIDANCE:g}]")
    pipe = _pipe(run)
    r = bench_decoding(pipe, n_t2i, n_edit, n_geneval, seed, parse_vary(vary, pipe.paradigm),
                       scales)
    write_json(out, r)
    write_text(out.with_suffix(".md"), markdown(r))
    typer.echo(markdown(r))
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@bench_app.command("paradigms")
def bench_paradigms_cmd(
    minutes: Optional[float] = typer.Option(None, min=0.05, help="Training budget per paradigm "
                                            "(the same for all; required unless --retime)."),
    config: Path = typer.Option(Path("configs/shapes_ar.toml"), help="Run config shared by all."),
    paradigms: str = typer.Option("", help="Comma-separated names (default: every available one)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key for every run."),
    tokenizer: Optional[Path] = typer.Option(None, help="A trained image tokenizer to share."),
    quick: bool = typer.Option(False, help="Evaluate on a quarter of the test items."),
    repeats: int = typer.Option(5, min=1, help="Timed sampling repeats (after one warm-up)."),
    init: Optional[Path] = typer.Option(None, help="Warm-start every paradigm from this finished "
                                        "run (weights + tokenizers; train.init_from)."),
    jobs: int = typer.Option(1, min=1, max=64, help="Trainings / evaluations run at once (each "
                             "at the config's thread count; sampling is timed one at a time)."),
    with_start: bool = typer.Option(False, help="With --init: also evaluate the --init run itself "
                                    "(untrained here) as a 'start' row, the point every paradigm "
                                    "began from."),
    retime: bool = typer.Option(False, help="Only time sampling again for the runs of an earlier "
                                "bench in --out (e.g. on a quieter machine); the first timings "
                                "stay in paradigms.json as sampling_first_timing."),
    out: Path = typer.Option(Path("results/paradigms"), "-o", "--out"),
):
    """Train every paradigm on the same budget, evaluate, time sampling; table + PNG."""
    from ..bench.paradigms import bench_paradigms, markdown, retime_paradigms
    from ..paradigms import PARADIGMS
    if retime:
        r = retime_paradigms(out, repeats)
        typer.echo(markdown(r))
        typer.echo(f"wrote {out}/paradigms.md, .json, .png")
        return
    if minutes is None:
        raise ValueError("--minutes is required (the training budget per paradigm), "
                         "unless --retime")
    names = [n.strip() for n in paradigms.split(",") if n.strip()] or list(PARADIGMS)
    unknown = [n for n in names if n not in PARADIGMS]
    if unknown:
        raise ValueError(f"unknown paradigm(s) {unknown}; available: {', '.join(PARADIGMS)}")
    if init is not None and not (init / "model.safetensors").is_file():
        raise ValueError(f"--init {init}: not a finished run (no model.safetensors there)")
    if with_start and init is None:
        raise ValueError("--with-start needs --init RUN (the run to evaluate as the start row)")
    r = bench_paradigms(config, names, minutes, out, set_, tokenizer, quick, repeats, init, jobs,
                        with_start)
    typer.echo(markdown(r))
    typer.echo(f"wrote {out}/paradigms.md, .json, .png")


@bench_app.command("speed")
def bench_speed_cmd(
    config: Path = typer.Option(Path("configs/shapes_ar.toml"), help="Run config (shape, data, precision)."),
    paradigms: str = typer.Option("", help="Comma-separated names (default: every available one)."),
    sizes: Optional[str] = typer.Option(None, help="Comma-separated: default (the config's shape), "
                                        "50m (dim 576, 12 layers, 9 heads). Default: default,50m; "
                                        "with --quick: default."),
    repeats: int = typer.Option(5, min=1, help="Timed repeats after warm-up (--quick: 1)."),
    device: str = typer.Option("cpu", help="cpu | cuda | auto"),
    threads: int = typer.Option(1, min=1, help="torch threads in every measuring process."),
    tokenizer: Optional[Path] = typer.Option(None, help="A trained image tokenizer folder "
                                             "(default: random weights of the config's shape)."),
    quick: bool = typer.Option(False, help="Smoke run: 1 repeat, small matmuls and copies."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="Also time "
                                           "autoregressive generation with compiled decoding "
                                           "steps (default: on, off with --quick)."),
    bf16: Optional[bool] = typer.Option(None, "--bf16/--no-bf16", help="Also time generation "
                                        "under bf16 autocast (eval.precision = bf16; default: "
                                        "on, off with --quick)."),
    out: Path = typer.Option(Path("results/speed"), "-o", "--out"),
):
    """Our own speed: machine peaks, training tokens/s + MFU, seconds per image, cache gains,
    decode bandwidth use, answer latency; speed.json + speed.md + speed.png."""
    from ..bench.speed import bench_speed, markdown
    from ..paradigms import PARADIGMS
    names = [n.strip() for n in paradigms.split(",") if n.strip()] or list(PARADIGMS)
    size_list = [s.strip() for s in (sizes or ("default" if quick else "default,50m")).split(",")
                 if s.strip()]
    r = bench_speed(config, names, size_list, out, repeats, device, threads, quick, tokenizer,
                    compile=not quick if compile is None else compile,
                    bf16=not quick if bf16 is None else bf16)
    typer.echo(markdown(r))
    typer.echo(f"wrote {out}/speed.md, .json, .png")


@bench_app.command("peers")
def bench_peers_cmd(
    only: str = typer.Option("", help="Comma-separated peer jobs (default: every one): "
                             "xtransformers (training tokens/s), transfusion (flow s/image), "
                             "janus (generation and answering vs transformers' Janus)."),
    repeats: int = typer.Option(5, min=1, help="Timed repeats after warm-up (--quick: 1)."),
    rounds: int = typer.Option(2, min=1, help="Training: processes per implementation, ABBA "
                               "order, repeats pooled (--quick: 1)."),
    threads: int = typer.Option(1, min=1, help="torch threads in every measuring process."),
    quick: bool = typer.Option(False, help="Smoke run: tiny shapes, 1 repeat."),
    janus_config: Optional[Path] = typer.Option(None, help="The janus job's model shape (a run "
                                                "config; default configs/janus_compat.toml; "
                                                "configs/janus_pro_1b_shape.toml: Janus-Pro-1B "
                                                "with 2 layers)."),
    janus_batch: Optional[int] = typer.Option(None, min=2, max=64, help="The janus job's "
                                              "larger batch (default 16)."),
    out: Path = typer.Option(Path("results/peers"), "-o", "--out"),
):
    """Our speed next to peer libraries on identical work, each in its own process:
    ratios against the issue's bars; peers.json + peers.md."""
    from ..bench.peers import PEERS, bench_peers, check_names, markdown
    names = [n.strip() for n in only.split(",") if n.strip()] or list(PEERS)
    check_names(names)
    if janus_config is not None and not janus_config.is_file():
        raise ValueError(f"--janus-config {janus_config}: no such file")
    janus = {"config": str(janus_config) if janus_config else None, "batch": janus_batch}
    r = bench_peers(names, out, quick, repeats, threads, rounds, janus)
    typer.echo(markdown(r))
    typer.echo(f"wrote {out}/peers.md, .json")
    failed = [n for n, job in r["peers"].items() if "error" in job]
    if failed:
        typer.echo(f"unimm: peer job(s) failed: {', '.join(failed)} (errors in peers.json)",
                   err=True)
        raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------
# serving

def _serve_settings(max_batch, wait_ms, queue_size, timeout):
    from ..serve.settings import ServeSettings
    return ServeSettings(max_batch=max_batch, wait_ms=wait_ms, queue_size=queue_size,
                         request_timeout_s=timeout)


@app.command("serve")
def serve_cmd(
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every one)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    max_batch: int = typer.Option(16, help="Rows in one shared forward pass (1: one at a time)."),
    wait_ms: float = typer.Option(5.0, min=0, help="Batching wait window after a first request."),
    queue_size: int = typer.Option(64, min=1, help="Waiting rows per lane before answering 503."),
    timeout: float = typer.Option(60.0, min=0.1, help="Per-request timeout in seconds (504)."),
    compile: bool = typer.Option(False, "--compile", help="Compiled token-by-token decoding "
                                 "(same greedy outputs): the first request per kind (answers, "
                                 "images) and batch class (<= 8 rows, 9-256) compiles for about "
                                 "a minute on a CPU; faster after."),
    precision: Optional[str] = typer.Option(None, help=PRECISION_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    image_size: Optional[int] = typer.Option(None, min=8, help=SIZE_HELP),
):
    """OpenAI-compatible server (chat, images, edits) and a web page at /, over the Python API."""
    try:
        import uvicorn
        from ..serve.app import create_app
    except ImportError as e:
        raise ValueError(f"serving needs the `serve` extra ({e.name} is missing): "
                         "pip install -e '.[serve]'") from None
    settings = _serve_settings(max_batch, wait_ms, queue_size, timeout)
    api = create_app(_pipe(run, compile, precision, dtype, image_size), settings)
    typer.echo(f"unimm: serving on http://{host}:{port}/  (OpenAI API at /v1, docs at /docs)")
    uvicorn.run(api, host=host, port=port, log_level="warning",
                timeout_graceful_shutdown=int(timeout) + 5)


@bench_app.command("serve")
def bench_serve_cmd(
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    url: Optional[str] = typer.Option(None, help="A running server on loopback (default: start "
                                      "one per mode on a free loopback port)."),
    clients: int = typer.Option(32, min=1, max=256, help="Concurrent clients."),
    seconds: float = typer.Option(20.0, min=1, max=600, help="Duration of each measurement."),
    kinds: str = typer.Option("generate,chat", help="Comma-separated: generate, chat, edit."),
    modes: str = typer.Option("batched,single", help="batched (dynamic batching) and/or single "
                              "(max_batch 1); ignored with --url."),
    threads: int = typer.Option(1, min=1, help="torch threads in a started server."),
    out: Path = typer.Option(Path("results/bench_serve.json"), "-o", "--out"),
):
    """Load check: N concurrent loopback clients for T seconds per kind of request; requests/s,
    p50/p99 latency, errors, 503s, the server's peak memory, and batched vs one-at-a-time."""
    from ..bench.serve_load import bench_serve, markdown
    from ..utils.io import write_json
    r = bench_serve(run, url, clients, seconds, [k.strip() for k in kinds.split(",") if k.strip()],
                    [m.strip() for m in modes.split(",") if m.strip()], threads)
    write_json(out, r)
    typer.echo(markdown(r))
    typer.echo(f"wrote {out}")


# ----------------------------------------------------------------------------------------------
# demo

@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Folder for report.md and PNGs."),
    run: Optional[Path] = typer.Option(None, help=RUN_HELP),
    seed: Optional[int] = typer.Option(None, help="Which fresh test scenes (random if omitted)."),
):
    """Answer questions about fresh test scenes, draw and edit, with the judge's verdicts."""
    from ..demo import run_demo
    report = run_demo(out, run, seed)
    typer.echo(f"wrote {report}")


def _usage_errors() -> tuple[type[BaseException], ...]:
    # click's usage errors; typer >= 0.2x vendors click and raises its own (TyperException)
    errors = [getattr(typer, "TyperException", None)]
    try:
        import click
        errors.append(click.ClickException)
    except ImportError:
        pass
    return tuple(e for e in errors if e is not None)


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    command = typer.main.get_command(app)
    try:
        rc = command.main(args=sys.argv[1:], prog_name="unimm", standalone_mode=False)
    except _usage_errors() as e:                         # options, arguments, their values
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError":      # `unimm` or `unimm data` alone
            typer.echo(ctx.get_help() if ctx else "")
            sys.exit(0)
        where = ctx.command_path if ctx else "unimm"
        msg = e.format_message() if hasattr(e, "format_message") else str(e)
        _fail(f"{msg} (see `{where} --help`)")
    except typer.Abort:
        typer.echo("unimm: interrupted", err=True)
        sys.exit(130)
    except _user_errors() as e:
        if os.environ.get("UNIMM_DEBUG"):
            raise
        _fail(str(e) or type(e).__name__)
    except KeyboardInterrupt:
        typer.echo("unimm: interrupted", err=True)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)


def _fail(message: str) -> None:
    """One line on stderr, exit status 2 (the message's own line breaks are flattened)."""
    typer.echo("unimm: error: " + " ".join(message.split()), err=True)
    sys.exit(2)


if __name__ == "__main__":
    main()

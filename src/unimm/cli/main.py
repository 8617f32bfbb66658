"""`unimm` command line: thin adapters over the Python API.

User errors (bad images, configs, manifests, options) print one clear line and exit with 2;
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


def _user_errors() -> tuple[type[BaseException], ...]:
    from ..data.images import ImageError
    from ..data.manifest import ManifestError
    from ..eval.judge import JudgeError
    from ..utils.config import ConfigError
    return (ImageError, ManifestError, JudgeError, ConfigError, FileExistsError,
            FileNotFoundError, ValueError)


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
    from ..data import manifest
    if dataset == "shapes":
        from ..data.splits import WorldConfig
        if n is None:
            raise ValueError("--n is required for the shapes dataset (it has no fixed size)")
        path = manifest.export_split(split, n, out, WorldConfig(image_size=image_size, holdout=holdout),
                                     overwrite=force)
    elif dataset == "digits":
        path = manifest.export_digits(split, out, image_size=image_size, n=n, overwrite=force)
    else:
        raise ValueError(f"unknown dataset {dataset!r}; known: shapes, digits")
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
        from ..eval.selftest import selftest as run
        _echo_json(run(n, image_size, seed))
        return
    if not images:
        raise ValueError("give one or more image files, or --selftest")
    from ..data.text import caption
    from ..eval.judge import judge
    for p in images:
        scene = judge(p)
        d = scene.to_dict()
        d["caption"] = caption(scene)
        d["file"] = str(p)
        _echo_json(d)


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


# ----------------------------------------------------------------------------------------------
# demo

@app.command("demo")
def demo_cmd(out: Path = typer.Option(Path("demo_out"), "-o", "--out", help="Folder for report.md and PNGs.")):
    """Show the world: captioned grids, questions with answers, edits, and the judge at work."""
    from ..demo import run_demo
    report = run_demo(out)
    typer.echo(f"wrote {report}")


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app()
    except _user_errors() as e:
        if os.environ.get("UNIMM_DEBUG"):
            raise
        msg = str(e) or type(e).__name__
        typer.echo(f"unimm: error: {msg}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("unimm: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

"""Package a finished run as the default model that ships in the package, with its model card.

    .venv/bin/python scripts/ship_default.py [RUN] [--recipe configs/recipes/default.toml]
                                             [--digits runs/digits-ar]

The recipe (configs/recipes/default.toml) lists the stages of the default model in order, each
a config, its run folder and its budget; RUN defaults to the last stage's run. Copies what
inference needs (config.json, tokenizer/, model.safetensors) plus the evidence (eval JSON,
curves, sample grids, metrics.csv) into src/unimm/assets/default/ and writes MODEL_CARD.md
from the run's own files and the recipe: nothing in the card is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "src" / "unimm" / "assets" / "default"
RECIPE = ROOT / "configs" / "recipes" / "default.toml"
KEEP = ["config.json", "model.safetensors", "metrics.csv", "curves.png", "eval_curves.png",
        "eval.json", "eval_guidance1.json", "bench_decoding.json", "samples_t2i.png",
        "samples_edit.png"]


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


BARS = {"vqa/overall": 0.97, "caption/scene_correct": 0.97, "t2i/full_scene": 0.95,
        "edit/success": 0.85}
KIND_BAR = 0.93


def read_recipe(path: Path = RECIPE) -> list[dict]:
    """The recipe's stages in order: {"config", "run", "minutes", "name"} (name: the config's)."""
    stages = tomllib.loads(Path(path).read_text(encoding="utf-8")).get("stage", [])
    if not stages:
        raise SystemExit(f"{path}: no [[stage]] tables")
    for st in stages:
        if set(st) != {"config", "run", "minutes"}:
            raise SystemExit(f"{path}: each [[stage]] has exactly config, run and minutes; got {st}")
        st["name"] = tomllib.loads((ROOT / st["config"]).read_text(encoding="utf-8"))["name"]
    return stages


def _command(stage: dict | None, name: str, run: Path) -> str:
    if stage is None:                          # a run the recipe does not list
        return f"`unimm train {name} -o {run}`"
    budget = f" --minutes {stage['minutes']:g}" if stage["minutes"] else ""
    return f"`unimm train {stage['config']} -o {stage['run']}{budget}`"


def _stages(run: Path) -> list[tuple[Path, dict, dict]]:
    """The run and the runs it was warm-started from (train.init_from), oldest first."""
    out = []
    while True:
        cfg = json.loads((run / "config.json").read_text())["config"]
        st = json.loads((run / "ckpt" / "state.json").read_text())
        out.append((run, cfg, st))
        parent = cfg["train"].get("init_from", "")
        if not parent:
            return out[::-1]
        run = Path(parent)


def _limits(m: dict, minutes: float) -> list[str]:
    miss = [f"{k} {m[k]:.3f} < {b}" for k, b in BARS.items() if m.get(k, 0.0) < b]
    miss += [f"{k} {v:.3f} < {KIND_BAR}" for k, v in m.items()
             if k.startswith("vqa/kind/") and v < KIND_BAR]
    if not miss:
        return ["- Meets every bar the project set for the default model."]
    return ["- This model does NOT yet meet the project's bars for the default model (VQA >= 0.97 "
            "with every kind >= 0.93, caption >= 0.97, text-to-image >= 0.95, editing >= 0.85); "
            f"short of: {'; '.join(miss)}. It is what {minutes:.0f} CPU-minutes give, shipped so "
            "that the demo and API work."]


def card(run: Path, digits: Path | None, recipe: list[dict]) -> str:
    stages = _stages(run)
    by_name = {st["name"]: st for st in recipe}
    cfg = json.loads((run / "config.json").read_text())["config"]
    ev = json.loads((run / "eval.json").read_text())
    m, cond = ev["metrics"], ev["conditions"]
    st = json.loads((run / "ckpt" / "state.json").read_text())
    tok = json.loads((run / "tokenizer" / "image" / "metrics.json").read_text())
    from safetensors.torch import load_file
    n_params = sum(t.numel() for t in load_file(str(run / "model.safetensors")).values())
    hist = [h for h in st["history"] if "loss" in h]
    mc = cfg["model"]
    lines = [
        f"# Model card: unimm default model (`{cfg['name']}`)",
        "",
        "The autoregressive unified model that ships with unimm: one decoder-only transformer that",
        "answers questions about ShapesWorld images, captions them, draws them from text and edits them.",
        "",
        "## Recipe",
        "",
        "- Config: " + "; then ".join(
            f"{_command(by_name.get(c['name']), c['name'], r)}"
            f" ({s_['step']} steps, {s_['elapsed'] / 60:.0f} min)" for r, c, s_ in stages)
        + (" (later stages warm-start from the earlier run: `train.init_from`)" if len(stages) > 1
           else "") + "; the stages in order: `configs/recipes/default.toml`; the resolved "
        "config is `config.json`.",
        f"- Backbone: {mc['n_layers']} layers, width {mc['dim']}, {mc['n_heads']} heads, SwiGLU {mc['mlp_hidden']}, "
        f"RMSNorm, M-RoPE with absolute (row, col) for image codes; {n_params / 1e6:.2f}M parameters.",
        f"- Image tokenizer: PatchVQ, 4x4 patches -> 8x8 = 64 codes, codebook {tok['codebook_size']}; "
        f"trained {tok['train_seconds']:.0f} s; test reconstructions read exactly by the judge "
        f"{_fmt(tok['test']['judge_exact'])}, PSNR {tok['test']['psnr']:.1f} dB, codebook usage {_fmt(tok['test']['usage'])}.",
        f"- Text: byte-level BPE, {json.loads((run / 'config.json').read_text())['vocab']['n_text']} tokens.",
        f"- Data: ShapesWorld train split, task mixture of the last stage caption {cfg['data']['caption']} / VQA {cfg['data']['vqa']} / "
        f"text-to-image {cfg['data']['t2i']} / editing {cfg['data']['edit']} (earlier stages: their configs); hold-out mode `{cfg['data']['world']['holdout']}` "
        "(five colour-shape pairs never drawn as targets)"
        + "".join(f"; {c['data'].get('vqa_turns', 1)} questions per VQA picture in `{c['name']}` "
                  "(`data.vqa_turns`, one branch each"
                  + (f"; asked again: {', '.join(c['data']['vqa_extra_kinds'])}"
                     if c["data"].get("vqa_extra_kinds") else "") + ")" for _, c, _ in stages
                  if c["data"].get("vqa_turns", 1) > 1)
        + "".join(f"; {c['data']['edit_turns']} edits per editing picture in `{c['name']}` "
                  "(`data.edit_turns`, one branch each)" for _, c, _ in stages
                  if c["data"].get("edit_turns", 1) > 1) + ".",
        f"- Training: {st['step']} steps of batch {cfg['train']['batch_size']}, AdamW lr {cfg['train']['lr']} "
        f"(warm-up {cfg['train']['warmup_steps']}, cosine to {cfg['train']['min_lr_ratio']}x over {st['max_steps']} steps), "
        f"bf16 autocast, condition dropout {cfg['ar']['cfg_dropout']}; final training loss {hist[-1]['loss']:.3f}.",
        f"- Loss averaging `{cfg['ar'].get('loss_reduction', 'token')}`, image-cell embeddings "
        f"`{mc.get('image_pos', cfg.get('image_pos', 'none'))}` (see `unimm.paradigms.ar` and "
        "`unimm.model.unified`).",
        f"- Time and machine: {sum(s_['elapsed'] for _, _, s_ in stages) / 60:.0f} min of training "
        "in all on 1 thread of a 2-core AMD EPYC CPU (no GPU), shared with other jobs for part of "
        "the run.",
        "",
        f"## `unimm eval` on the ShapesWorld test split ({ev['split']}, greedy decoding, guidance "
        f"{cfg['eval']['guidance']}"
        + (f"; editing: guidance {cfg['eval']['edit_guidance']}"
           if cfg["eval"].get("edit_guidance") is not None else "") + ")",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in m.items()]
    lines += ["", f"Measured {cond['date']}, torch threads {cond['torch_threads']}, load average "
              f"{cond['loadavg_1_5_15']}.", "",
              "![training curves](curves.png)", "", "![validation curves](eval_curves.png)", "",
              "![text-to-image samples](samples_t2i.png)", "", "![editing samples](samples_edit.png)", ""]
    if (run / "bench_decoding.json").is_file():
        bd = json.loads((run / "bench_decoding.json").read_text())
        gen = "geneval_overall" in bd["rows"][0]
        lines += ["## Decoding", "",
                  "`unimm bench decoding` on the *val* split with this model "
                  f"({bd['n_t2i']} full-scene prompts, {bd['n_edit']} edits"
                  + (f", {bd['n_geneval']} GenEval-style prompts" if gen else "")
                  + f"; `bench_decoding.json`, {bd['conditions']['date']}):", "",
                  "| guidance | temperature | top_p | t2i full scene | " + ("GenEval overall | " if gen else "")
                  + "edit success | images/s |", "|---|---|---|---|" + ("---|" if gen else "") + "---|---|"]
        lines += [f"| {r['guidance']} | {r['temperature']} | {r['top_p']} | {r['t2i_full_scene']:.3f} | "
                  + (f"{r['geneval_overall']:.3f} | " if gen else "")
                  + f"{r['edit_success']:.3f} | {r['images_per_s']:.0f} |" for r in bd["rows"]]
        lines += [""]
    if (run / "eval_guidance1.json").is_file():
        g1 = json.loads((run / "eval_guidance1.json").read_text())["metrics"]
        lines += ["Without guidance (greedy, guidance 1.0) the model scores on test: "
                  + ", ".join(f"{k} {g1[k]:.3f}" for k in ("t2i/full_scene", "geneval/overall",
                                                            "edit/success", "holdout/t2i_full_scene")) + ".", ""]
    if digits is not None:
        dev = json.loads((digits / "eval.json").read_text())["metrics"]
        dst = json.loads((digits / "ckpt" / "state.json").read_text())
        dcfg = json.loads((digits / "config.json").read_text())["config"]["model"]
        lines += ["## The same family on real digits (`configs/digits_ar.toml`, not shipped)", "",
                  f"{dcfg['n_layers']} layers, width {dcfg['dim']}; {dst['step']} steps in "
                  f"{dst['elapsed'] / 60:.0f} min on 1 CPU thread.", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in dev.items()]
        lines += ["", "Generation prompts are the ten canonical \"the digit k\" strings in every split, so the "
                  "guidance used here (1.5) was chosen on the same prompts it is scored on.", ""]
    lines += ["## Limits", ""] + _limits(m, sum(s_["elapsed"] for _, _, s_ in stages) / 60) + [
              f"- Yes/no answers: the model says \"yes\" to {m.get('vqa/yes_rate', float('nan')):.2f} of "
              "questions whose answers are balanced (0.5 would be unbiased).",
              "- Trained only on ShapesWorld at 32x32: it knows 5 shapes, 6 colours, 2 sizes and a 3x3 grid.",
              "- Text-to-image and editing are measured on in-distribution prompts and edits (no hold-out pair); "
              "the hold-out rows measure drawing colour-shape pairs it has only ever *seen* (in captioning/VQA "
              "images), and it does not draw them.",
              "- GenEval-style prompts leave cells and colours free; greedy decoding (the default, best for "
              "full-scene prompts) piles their objects into the last cells, so two-object, counting and position "
              "prompts score low; stronger guidance (3) draws them far better but full scenes and edits "
              "worse (see Decoding).",
              ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, nargs="?", default=None,
                    help="the run to ship (default: the recipe's last stage)")
    ap.add_argument("--recipe", type=Path, default=RECIPE)
    ap.add_argument("--digits", type=Path, default=None)
    a = ap.parse_args()
    recipe = read_recipe(a.recipe)
    a.run = a.run or Path(recipe[-1]["run"])
    text = card(a.run, a.digits, recipe)
    tmp = ASSETS.with_name(".default.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in KEEP:
        if (a.run / f).is_file():
            shutil.copy2(a.run / f, tmp / f)
    for sub in ("image", "text"):
        src = a.run / "tokenizer" / sub
        dst = tmp / "tokenizer" / sub
        dst.mkdir(parents=True)
        for f in src.iterdir():
            if f.suffix in (".json", ".safetensors") or f.name == "recon.png":
                shutil.copy2(f, dst / f.name)
    (tmp / "MODEL_CARD.md").write_text(text)
    shutil.rmtree(ASSETS, ignore_errors=True)
    tmp.rename(ASSETS)
    size = sum(p.stat().st_size for p in ASSETS.rglob("*") if p.is_file())
    print(f"shipped {a.run} -> {ASSETS} ({size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()

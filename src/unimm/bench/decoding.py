"""`unimm bench decoding`: which image-sampling setting works best for a run, measured on val.

Text-to-image full-scene match, GenEval-style overall and editing success for greedy /
temperature / nucleus sampling, with and without classifier-free guidance; images per second
for each. The run's defaults (config `eval`, and the paradigm's own sampler settings) should be
set from this table, never guessed.

Besides the sampling settings, a paradigm's own sampler settings can be swept (`vary`, e.g.
masked `confidence_noise` or `steps`, flow `steps` / `solver`): every combination of the listed
values is crossed with every sampling setting, on the same weights. Only sampler settings make
sense there; a key the weights were trained with (`shift`, `predict`, ...) would measure a model
that was never trained.

Full-scene prompts pin every object down, GenEval-style ones ("two circles") leave cells and
colours free: greedy decoding suits the first and fails the second (the mass for "an object
starts here" is spread over many codes, so background wins each patch and objects pile into
the last cells), so both columns are shown.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from ..data import shapes_metrics as M
from ..data.geneval import prompt_suite
from ..data.shapes_judge import judge_batch
from ..data.splits import ShapesWorld
from ..data.text import EDIT_KINDS
from ..paradigms.sampling import SamplingConfig
from ..utils.config import ConfigError, _parse_value, from_dict, to_dict
from ..utils.machine import conditions

SETTINGS = [  # (guidance, temperature, top_k, top_p)
    (1.0, 0.0, 0, 1.0), (1.5, 0.0, 0, 1.0), (3.0, 0.0, 0, 1.0),
    (1.0, 0.5, 0, 1.0), (1.0, 1.0, 0, 1.0), (1.0, 1.0, 0, 0.9), (1.5, 0.5, 0, 1.0), (3.0, 0.7, 0, 1.0),
    (3.0, 1.0, 0, 0.9),
]


def parse_vary(items: list[str], paradigm) -> dict[str, list]:
    """`KEY=V1,V2,...` strings -> {key: [values]} for fields of the paradigm's config, each
    value checked by building that config with it (so types and ranges are the config's)."""
    cfg = getattr(paradigm, "cfg", None)
    name = paradigm.name
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise ConfigError(f"--vary: the {name} paradigm has no sampler settings to vary")
    fields = sorted(f.name for f in dataclasses.fields(cfg))
    out: dict[str, list] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().removeprefix(f"{name}.")
        if not sep or not key or not text.strip():
            raise ConfigError(f"--vary {item!r} must look like KEY=V1,V2 "
                              f"(e.g. confidence_noise=0,3,10)")
        if key not in fields:
            raise ConfigError(f"--vary: {name} has no setting {key!r}; its settings: "
                              f"{', '.join(fields)}")
        if key in out:
            raise ConfigError(f"--vary: {key!r} is given twice")
        values = [_parse_value(t.strip()) for t in text.split(",")]
        for v in values:
            with_values(cfg, name, {key: v})       # raises ConfigError if not accepted
        out[key] = values
    return out


def with_values(cfg, name: str, over: dict):
    """The paradigm config `cfg` with the settings in `over` replaced, checked as the config
    loader checks them."""
    return from_dict(type(cfg), {**to_dict(cfg), **over}, where=name)


def bench_decoding(pipe, n_t2i: int = 150, n_edit: int = 100, n_geneval: int = 20,
                   seed: int = 0, vary: dict[str, list] | None = None,
                   guidance: list[float] | None = None) -> dict:
    """Rows of val scores per (paradigm setting, sampling setting). `guidance` replaces the
    standard sampling settings by greedy decoding at those scales; n_edit / n_geneval 0 skip
    those columns."""
    w = ShapesWorld("val", pipe.cfg.data.world)
    t2i = [w.t2i_example(i, geneval=False) for i in range(n_t2i)]
    suite = prompt_suite(n_geneval, seed=1, forbid=w.forbid_gen) if n_geneval else []
    eds = [w.edit_example(i, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n_edit)]
    settings = SETTINGS if guidance is None else [(g, 0.0, 0, 1.0) for g in guidance]
    vary = vary or {}
    base = pipe.paradigm.cfg if vary else None
    combos = list(itertools.product(*vary.values()))
    rows = []
    try:
        for combo in combos:
            over = dict(zip(vary, combo))
            if over:
                pipe.paradigm.cfg = with_values(base, pipe.paradigm.name, over)
            for g, t, k, p in settings:
                rows.append({**over, **_scores(pipe, t2i, suite, eds, g, SamplingConfig(t, k, p),
                                              seed), "guidance": g, "temperature": t,
                             "top_k": k, "top_p": p})
                print(rows[-1], flush=True)
    finally:
        if vary:
            pipe.paradigm.cfg = base
    return {"conditions": conditions(), "paradigm": pipe.paradigm.name, "n_t2i": n_t2i,
            "n_edit": n_edit, "n_geneval": len(suite), "vary": vary, "rows": rows}


def _scores(pipe, t2i, suite, eds, g: float, s: SamplingConfig, seed: int) -> dict:
    t0 = time.perf_counter()
    imgs = pipe.draw([e.text for e in t2i], guidance=g, sampling=s, seed=seed)
    dt = time.perf_counter() - t0
    judged = judge_batch(np.stack(imgs))
    out = {"t2i_full_scene": M.full_scene_exact([e.target_scene for e in t2i], judged),
           "t2i_object_recall": M.object_recall([e.target_scene for e in t2i], judged),
           "geneval_overall": None, "edit_success": None, "images_per_s": len(t2i) / dt}
    if suite:
        out["geneval_overall"] = M.geneval_scores(suite, judge_batch(np.stack(
            pipe.draw([q.text for q in suite], guidance=g, sampling=s, seed=seed))))["overall"]
    if eds:
        outs = pipe.draw([e.text for e in eds], [e.image for e in eds], guidance=g, sampling=s,
                         seed=seed)
        out["edit_success"] = M.edit_scores([e.scene for e in eds], [e.target_scene for e in eds],
                                            judge_batch(np.stack(outs)))["success"]
    return out


def markdown(r: dict) -> str:
    keys = list(r.get("vary") or {})
    head = keys + ["guidance", "temperature", "top-p", "t2i full-scene", "object recall",
                   "GenEval", "edit", "images/s"]
    c = r["conditions"]
    lines = [f"# unimm bench decoding ({r.get('paradigm', '?')}, val: {r['n_t2i']} full-scene "
             f"prompts, {r['n_geneval']} GenEval-style, {r['n_edit']} edits)", "",
             f"{c.get('machine')}, {c.get('cpu_count')} cores, load {c.get('loadavg_1_5_15')}, "
             f"torch {c.get('torch')}, {c.get('date')}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def f(x):
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))
    for row in r["rows"]:
        vals = [row[k] for k in keys] + [row["guidance"], row["temperature"], row["top_p"],
                                         row["t2i_full_scene"], row.get("t2i_object_recall"),
                                         row["geneval_overall"], row["edit_success"],
                                         row["images_per_s"]]
        lines.append("| " + " | ".join(f(v) for v in vals) + " |")
    return "\n".join(lines) + "\n"

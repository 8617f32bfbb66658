"""`unimm eval`: every capability of a run, judged exactly, as one flat dict of numbers.

ShapesWorld: VQA per question kind, caption scene-correctness and exact match, text-to-image
full-scene match on caption prompts, GenEval-style categories, editing success per edit kind,
and the compositional hold-out (generation and editing of never-drawn colour-shape pairs).
Digits: recognition accuracy and generated digits recognised by the independent classifier.
All generation uses the run's default guidance and greedy decoding unless told otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..data import digits as D
from ..data.digits_judge import generation_report, recognition_accuracy
from ..data.geneval import GenevalPrompt, Want, prompt_suite
from ..data.shapes import HOLDOUT_PAIRS
from ..data.shapes_judge import judge_batch
from ..data.splits import ShapesWorld
from ..data.text import EDIT_KINDS, QUESTION_KINDS, caption
from ..utils.plot import image_grid, side_by_side
from . import metrics as M

_SUITE_SEED = {"train": 0, "val": 1, "test": 2}


def _n(n: int, cfg, quick: bool) -> int:
    return max(1, int(round(n * cfg.quick_fraction))) if quick else n


def _timed(fn, *a, **k):
    t = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t


def evaluate(pipe, split: str = "test", cfg=None, quick: bool = False, progress: bool = True,
             samples_dir: str | Path | None = None) -> dict:
    cfg = cfg or pipe.cfg.eval
    if pipe.cfg.data.dataset == "digits":
        return _evaluate_digits(pipe, split, cfg, quick, samples_dir)
    world = ShapesWorld(split, pipe.cfg.data.world)
    out: dict = {}
    steps = tqdm(total=6, desc=f"eval {split}", disable=not progress)

    # VQA, kinds cycled so every kind gets the same count. Always the full n_vqa, also in the
    # quick (periodic) evaluation: answering costs ~1/100 of drawing, and a quarter (15 per
    # kind at the default) cannot rank runs a few points apart (val once favoured a run 0.79 to
    # 0.73 that test then put 0.70 to 0.73).
    n = cfg.n_vqa
    exs = [world.vqa_example(i, QUESTION_KINDS[i % len(QUESTION_KINDS)]) for i in range(n)]
    preds, dt = _timed(pipe.answer, [e.image for e in exs], [e.text for e in exs])
    out.update({f"vqa/{k}": v for k, v in M.vqa_accuracy(
        [e.kind for e in exs], [e.target_text for e in exs], preds).items()})
    out["speed/answers_per_s"] = n / dt
    steps.update()

    # Captions (reference: the canonical phrasing)
    n = _n(cfg.n_caption, cfg, quick)
    exs = [world.caption_example(i) for i in range(n)]
    caps = pipe.answer([e.image for e in exs], [e.text for e in exs])
    out.update({f"caption/{k}": v for k, v in M.caption_scores(
        [e.scene for e in exs], caps, [[e.target_text] for e in exs]).items()})
    steps.update()

    # Text-to-image from full-scene captions (any phrasing)
    n = _n(cfg.n_t2i, cfg, quick)
    exs = [world.t2i_example(i, geneval=False) for i in range(n)]
    imgs, dt = _timed(pipe.draw, [e.text for e in exs])
    judged = judge_batch(np.stack(imgs))
    out["t2i/full_scene"] = M.full_scene_exact([e.target_scene for e in exs], judged)
    out["t2i/object_recall"] = M.object_recall([e.target_scene for e in exs], judged)
    out["speed/images_per_s"] = n / dt
    t2i_samples = (exs[:16], imgs[:16], judged[:16])
    steps.update()

    # GenEval-style suite
    suite = prompt_suite(_n(cfg.n_geneval, cfg, quick), seed=_SUITE_SEED[split],
                         forbid=world.forbid_gen)
    imgs = pipe.draw([p.text for p in suite])
    out.update({f"geneval/{k}": v for k, v in
                M.geneval_scores(suite, judge_batch(np.stack(imgs))).items()})
    steps.update()

    # Editing, kinds cycled
    n = _n(cfg.n_edit, cfg, quick)
    exs = [world.edit_example(i, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n)]
    imgs = pipe.draw([e.text for e in exs], [e.image for e in exs])
    judged = judge_batch(np.stack(imgs))
    r = M.edit_scores([e.scene for e in exs], [e.target_scene for e in exs], judged)
    out.update({f"edit/{k}": v for k, v in r.items()})
    for kind in EDIT_KINDS:
        sel = [j for j, e in enumerate(exs) if e.kind == kind]
        out[f"edit/kind/{kind}"] = M.edit_scores([exs[j].scene for j in sel],
                                                 [exs[j].target_scene for j in sel],
                                                 [judged[j] for j in sel])["success"]
    edit_samples = (exs[:8], imgs[:8], judged[:8])
    steps.update()

    # Compositional hold-out: pairs never drawn in training
    if split != "train":
        n = _n(cfg.n_holdout, cfg, quick)
        exs = [world.holdout_t2i_example(i) for i in range(n)]
        judged = judge_batch(np.stack(pipe.draw([e.text for e in exs])))
        out["holdout/t2i_full_scene"] = M.full_scene_exact([e.target_scene for e in exs], judged)
        out["holdout/t2i_pair_drawn"] = float(np.mean([
            bool(e.target_scene.pairs() & HOLDOUT_PAIRS & j.pairs()) for e, j in zip(exs, judged)]))
        exs = [world.holdout_edit_example(i) for i in range(n)]
        judged = judge_batch(np.stack(pipe.draw([e.text for e in exs], [e.image for e in exs])))
        out["holdout/edit_success"] = M.edit_scores(
            [e.scene for e in exs], [e.target_scene for e in exs], judged)["success"]
        prompts = [GenevalPrompt("colors", f"a {c} {s}", (Want(s, c),)) for c, s in sorted(HOLDOUT_PAIRS)]
        judged = judge_batch(np.stack(pipe.draw([p.text for p in prompts])))
        out["holdout/colors"] = float(np.mean([p.satisfied_by(j) for p, j in zip(prompts, judged)]))
    steps.update()
    steps.close()

    if samples_dir is not None:
        _sample_grids(Path(samples_dir), t2i_samples, edit_samples)
    return out


def _verdict(ok: bool) -> str:
    return "green" if ok else "red"


def _sample_grids(d: Path, t2i, edits) -> None:
    exs, imgs, judged = t2i
    ok = [e.target_scene.key() == j.key() for e, j in zip(exs, judged)]
    image_grid(imgs, [f"{'OK' if k else 'WRONG'}: {e.text}" + ("" if k else f"\nsaw: {caption(j)}")
                      for e, j, k in zip(exs, judged, ok)],
               d / "samples_t2i.png", colors=[_verdict(k) for k in ok], wrap=30,
               title="text-to-image (judge's verdict under each)")
    exs, imgs, judged = edits
    ok = [e.target_scene.key() == j.key() for e, j in zip(exs, judged)]
    pairs = [side_by_side(e.image, im) for e, im in zip(exs, imgs)]
    image_grid(pairs, [f"{'OK' if k else 'WRONG'}: {e.text}" for e, k in zip(exs, ok)],
               d / "samples_edit.png", ncols=4, colors=[_verdict(k) for k in ok], wrap=36,
               title="editing: source | output")


def _evaluate_digits(pipe, split, cfg, quick, samples_dir) -> dict:
    d = D.Digits(split, image_size=pipe.image_size)
    n = min(_n(cfg.n_digits, cfg, quick), len(d))
    idx = list(range(n))
    labels = [d.label(i) for i in idx]
    preds = pipe.answer([d.image(i) for i in idx], [D.question() for _ in idx])
    out = {"digits/recognition": recognition_accuracy(preds, labels)}
    wanted = [i % 10 for i in range(n)]
    imgs = pipe.draw([D.prompt(k) for k in wanted])
    rep = generation_report(np.stack(imgs), wanted)
    out.update({f"digits/generation_{k}" if k != "accuracy" else "digits/generation": v
                for k, v in rep.items() if isinstance(v, float)})
    if samples_dir is not None:
        image_grid(imgs[:20], [D.prompt(k) for k in wanted[:20]], Path(samples_dir) / "samples_digits.png",
                   ncols=10, title="generated digits")
    return out

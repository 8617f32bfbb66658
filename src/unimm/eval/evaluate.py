"""`unimm eval`: every capability of a run, judged exactly, as one flat dict of numbers.

The run's world (data/worlds.py) supplies the items and their metrics (`World.eval_suites`:
ShapesWorld's VQA per kind, captions, text-to-image, GenEval-style prompts, editing and the
compositional hold-out; the digits' recognition and generation; a manifest's exact matches);
this module asks the Pipeline for them in order, times the calls a suite asks to be timed and
writes the sample grids. Generation uses the run's default guidance and greedy decoding unless
the run says otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm


def evaluate(pipe, split: str = "test", cfg=None, quick: bool = False, progress: bool = True,
             samples_dir: str | Path | None = None) -> dict:
    """Metrics of a Pipeline on a split of its world (`cfg`: EvalConfig, default the run's;
    `quick`: the periodic evaluation's share of the items)."""
    cfg = cfg or pipe.cfg.eval
    out: dict = {}
    suites = pipe.world.eval_suites(split, cfg, quick)
    for s in tqdm(suites, desc=f"eval {split}", disable=not progress):
        t = time.perf_counter()
        got = pipe.answer(s.images, s.texts) if s.ask == "answer" else pipe.draw(s.texts, s.images)
        dt = time.perf_counter() - t
        out.update(s.score(got))
        if s.speed:
            out[f"speed/{s.speed}"] = len(s.texts) / dt
        if samples_dir is not None and s.samples is not None:
            s.samples(got, Path(samples_dir))
    return out

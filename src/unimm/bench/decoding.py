"""`unimm bench decoding`: which image-sampling setting works best for a run, measured on val.

Text-to-image full-scene match, GenEval-style overall and editing success for greedy /
temperature / nucleus sampling, with and without classifier-free guidance; images per second
for each. The run's defaults (config `eval`) should be set from this table, never guessed.

Full-scene prompts pin every object down, GenEval-style ones ("two circles") leave cells and
colours free: greedy decoding suits the first and fails the second (the mass for "an object
starts here" is spread over many codes, so background wins each patch and objects pile into
the last cells), so both columns are shown.
"""

from __future__ import annotations

import time

import numpy as np

from ..data.splits import ShapesWorld
from ..data.text import EDIT_KINDS
from ..eval import metrics as M
from ..eval.geneval import prompt_suite
from ..eval.judge import judge_batch
from ..paradigms.sampling import SamplingConfig
from .common import conditions

SETTINGS = [  # (guidance, temperature, top_k, top_p)
    (1.0, 0.0, 0, 1.0), (1.5, 0.0, 0, 1.0), (3.0, 0.0, 0, 1.0),
    (1.0, 0.5, 0, 1.0), (1.0, 1.0, 0, 1.0), (1.0, 1.0, 0, 0.9), (1.5, 0.5, 0, 1.0), (3.0, 0.7, 0, 1.0),
    (3.0, 1.0, 0, 0.9),
]


def bench_decoding(pipe, n_t2i: int = 150, n_edit: int = 100, n_geneval: int = 20,
                   seed: int = 0) -> dict:
    w = ShapesWorld("val", pipe.cfg.data.world)
    t2i = [w.t2i_example(i, geneval=False) for i in range(n_t2i)]
    suite = prompt_suite(n_geneval, seed=1, forbid=w.forbid_gen)      # unimm eval's val suite
    eds = [w.edit_example(i, EDIT_KINDS[i % len(EDIT_KINDS)]) for i in range(n_edit)]
    rows = []
    for g, t, k, p in SETTINGS:
        s = SamplingConfig(t, k, p)
        t0 = time.perf_counter()
        imgs = pipe.draw([e.text for e in t2i], guidance=g, sampling=s, seed=seed)
        dt = time.perf_counter() - t0
        full = M.full_scene_exact([e.target_scene for e in t2i], judge_batch(np.stack(imgs)))
        gen = M.geneval_scores(suite, judge_batch(np.stack(
            pipe.draw([q.text for q in suite], guidance=g, sampling=s, seed=seed))))["overall"]
        outs = pipe.draw([e.text for e in eds], [e.image for e in eds], guidance=g, sampling=s, seed=seed)
        ed = M.edit_scores([e.scene for e in eds], [e.target_scene for e in eds],
                           judge_batch(np.stack(outs)))["success"]
        rows.append({"guidance": g, "temperature": t, "top_k": k, "top_p": p,
                     "t2i_full_scene": full, "geneval_overall": gen, "edit_success": ed, "images_per_s": n_t2i / dt})
        print(rows[-1], flush=True)
    return {"conditions": conditions(), "n_t2i": n_t2i, "n_edit": n_edit,
            "n_geneval": len(suite), "rows": rows}

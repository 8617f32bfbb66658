"""Text-to-image full-scene accuracy of a masked / mmada run at several unmasking-order noise
levels (`confidence_noise`, sampling only), on the first N val prompts.

    python scripts/probe_confidence_noise.py RUN [--n 100] [--noise 0 1 3 10]

Greedy confidence order unmasks the surest cells first, which are background; this shows how
much Gumbel noise on that order (MaskGIT's choice temperature) recovers (README, paradigms)."""
import argparse
import dataclasses
import sys

import numpy as np
import torch

from unimm import Pipeline
from unimm.data.splits import ShapesWorld
from unimm.eval import metrics as M
from unimm.eval.judge import judge_batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=100, help="val prompts (default 100)")
    ap.add_argument("--noise", type=float, nargs="+", default=[0.0, 1.0, 3.0, 10.0])
    a = ap.parse_args()
    torch.set_num_threads(1)
    try:
        pipe = Pipeline.load(a.run)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not hasattr(pipe.paradigm.cfg, "confidence_noise"):
        print(f"error: {a.run} is a {pipe.cfg.paradigm} run; confidence_noise belongs to masked "
              "and mmada", file=sys.stderr)
        return 2
    world = ShapesWorld("val", pipe.cfg.data.world)
    exs = [world.t2i_example(i, geneval=False) for i in range(a.n)]
    targets = [e.target_scene for e in exs]
    for noise in a.noise:
        pipe.paradigm.cfg = dataclasses.replace(pipe.paradigm.cfg, confidence_noise=noise)
        judged = judge_batch(np.stack(pipe.draw([e.text for e in exs], seed=0)))
        print(f"confidence_noise {noise:g}: full scene {M.full_scene_exact(targets, judged):.3f}, "
              f"object recall {M.object_recall(targets, judged):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

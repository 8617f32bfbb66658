"""Training step time with and without `train.length_groups`, side by side in one process.

    python scripts/bench_length_groups.py configs/shapes_ar_stage7_draw.toml [--groups 1,2,3]
        [--repeats 8] [-o docs/length_groups.json]

For each repeat, every setting takes one full `Trainer.train_step` (batch, forward, backward,
AdamW) on the same step's batch, in turn, so drifting machine load hits all settings alike.
Prints and writes the medians, the spread, the padding share of the one padded batch, threads
and load average. Weights start fresh (the step time does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from unimm.paradigms.sequence import split_by_length
from unimm.runs import RunConfig
from unimm.train.tokenizer import prepare_tokenizers
from unimm.train.trainer import Trainer
from unimm.utils.config import load_config
from unimm.utils.io import write_text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("config", type=Path)
    ap.add_argument("--groups", default="1,2,3")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--tokenizer", default="src/unimm/assets/default/tokenizer/image")
    ap.add_argument("-o", "--out", type=Path, default=Path("docs/length_groups.json"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    groups = [int(g) for g in a.groups.split(",")]
    work = Path(tempfile.mkdtemp())
    trainers = {}
    for g in groups:
        cfg = load_config(RunConfig, a.config, [
            f"train.length_groups={g}", "train.init_from=", f"image_tokenizer_path={a.tokenizer}",
            "train.threads=1"])
        prepare_tokenizers(cfg, work / f"g{g}")
        trainers[g] = Trainer(cfg, work / f"g{g}", progress=False)
    pad = []
    for s in range(a.repeats):
        b = trainers[groups[0]].stream.batch(s)
        lens = b.valid.sum(1).tolist()
        pad.append({g: sum(len(x) * max(lens[i] for i in x) for x in split_by_length(lens, g))
                    for g in groups} | {"valid": sum(lens)})
    times = {g: [] for g in groups}
    for _ in range(2):                                   # warm-up
        for tr in trainers.values():
            tr.train_step()
    for s in range(a.repeats):
        for g, tr in trainers.items():
            tr.step = s                                  # the same batch for every setting
            t = time.perf_counter()
            tr.train_step()
            times[g].append(time.perf_counter() - t)
    base = statistics.median(times[groups[0]])
    rows = [{"length_groups": g, "step_s_median": statistics.median(v), "step_s_min": min(v),
             "step_s_max": max(v),
             "padded_slots_per_valid_token": sum(p[g] for p in pad) / sum(p["valid"] for p in pad),
             "speedup_vs_first": base / statistics.median(v)} for g, v in times.items()]
    res = {"config": str(a.config), "repeats": a.repeats, "threads": torch.get_num_threads(),
           "loadavg_1_5_15": os.getloadavg(), "rows": rows}
    for r in rows:
        print(f"length_groups {r['length_groups']}: step {r['step_s_median']:.3f} s "
              f"({r['step_s_min']:.3f}-{r['step_s_max']:.3f}), padded slots per token "
              f"{r['padded_slots_per_valid_token']:.2f}, speed-up {r['speedup_vs_first']:.2f}x")
    print(f"threads {res['threads']}, load average {res['loadavg_1_5_15']}")
    write_text(a.out, json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

"""Greedy outputs of a run on fixed test items, as JSON: answers, captions, image codes of
text-to-image and edits (guided and unguided), and a digest of the whole. Two runs of this
script on two versions of the code give the same digest when the refactor between them kept
the model's behaviour (the check behind "same greedy outputs" in docs/notes.md).

    python scripts/greedy_fingerprint.py -o before.json [--run DIR] [--compile]
"""

from __future__ import annotations

import argparse
import hashlib
import json

import numpy as np
import torch


def fingerprint(run: str | None, compile: bool, n: int) -> dict:
    from unimm.data.splits import ShapesWorld
    from unimm.pipeline import Pipeline
    pipe = Pipeline.load(run, compile=compile)
    w = ShapesWorld("test")
    vqa = [w.vqa_example(i) for i in range(n)]
    out = {
        "answers": pipe.answer([e.image for e in vqa], [e.text for e in vqa]),
        "captions": [pipe.caption(w.image(i)) for i in range(min(n, 16))],
    }
    prompts = [w.t2i_example(i, geneval=False).text for i in range(min(n, 16))]
    codes = {}
    for g in (1.0, 3.0):
        imgs = pipe.draw(prompts, guidance=g)
        codes[f"t2i_g{g:g}"] = [hashlib.sha256(np.asarray(im).tobytes()).hexdigest()[:16]
                                for im in imgs]
    edits = [w.edit_example(i) for i in range(min(n, 16))]
    imgs = pipe.draw([e.text for e in edits], [e.image for e in edits])
    codes["edit"] = [hashlib.sha256(np.asarray(im).tobytes()).hexdigest()[:16] for im in imgs]
    out["images"] = codes
    out["digest"] = hashlib.sha256(json.dumps(out, sort_keys=True).encode()).hexdigest()
    out["torch"] = torch.__version__
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--run", default=None)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--n", type=int, default=64)
    a = ap.parse_args()
    r = fingerprint(a.run, a.compile, a.n)
    with open(a.out, "w") as f:
        json.dump(r, f, indent=1)
    print(r["digest"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()

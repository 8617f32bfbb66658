"""GenEval's folder layout (Ghosh et al. 2023), for scoring a model with the official detector
elsewhere: `OUT/<index:05d>/metadata.jsonl` (the prompt's metadata, one line) and
`OUT/<index:05d>/samples/<k:04d>.png` (images per prompt), plus `OUT/export.json` (what was
run: model, sampling preset, seeds, prompt source).

Prompts: a GenEval metadata JSONL given by the user (the official `evaluation_metadata.jsonl`
when they have it; its text is not available here), else our own suite in the same format and
the same six tags (single_object, two_object, counting, colors, position, color_attr) over the
80 COCO classes and GenEval's ten colours, which the official evaluator reads the same way.

Sampling is pinned (`preset`): the family's published settings for a released checkpoint
(runs/families: Janus guidance 5, temperature 1; Emu3 guidance 3, top-k 2048), else the run's
own defaults; sample k of prompt i uses seed `seed + i`, with the prompt's images drawn in one
call, so a rerun writes the same images.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tqdm import tqdm

from ..utils.io import read_json, write_json, write_text

COCO = ("person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
        "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
        "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
        "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
        "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
        "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "computer mouse",
        "tv remote", "computer keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
        "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
        "toothbrush")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black",
          "white")
RELATIONS = ("left of", "right of", "above", "below")
NUMBERS = {2: "two", 3: "three", 4: "four"}
COUNTS = {"single_object": 80, "two_object": 99, "counting": 80, "colors": 94,
          "position": 100, "color_attr": 100}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _plural(word: str) -> str:
    irregular = {"person": "people", "sheep": "sheep", "skis": "skis", "scissors": "scissors",
                 "knife": "knives", "bus": "buses", "couch": "couches", "sandwich": "sandwiches",
                 "toothbrush": "toothbrushes", "wine glass": "wine glasses",
                 "hair drier": "hair driers", "tie": "ties"}
    return irregular.get(word, word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s"))


def our_prompts(seed: int = 0) -> list[dict]:
    """Our GenEval-format suite: the six tags, deterministic in `seed`."""
    rng = random.Random(seed)
    out = []
    for c in COCO:
        out.append({"tag": "single_object", "include": [{"class": c, "count": 1}],
                    "prompt": f"a photo of {_a(c)}"})
    for _ in range(COUNTS["two_object"]):
        a, b = rng.sample(COCO, 2)
        out.append({"tag": "two_object", "include": [{"class": a, "count": 1},
                                                     {"class": b, "count": 1}],
                    "prompt": f"a photo of {_a(a)} and {_a(b)}"})
    for _ in range(COUNTS["counting"]):
        c, n = rng.choice(COCO), rng.choice(tuple(NUMBERS))
        out.append({"tag": "counting", "include": [{"class": c, "count": n}],
                    "exclude": [{"class": c, "count": n + 1}],
                    "prompt": f"a photo of {NUMBERS[n]} {_plural(c)}"})
    for _ in range(COUNTS["colors"]):
        c, col = rng.choice(COCO), rng.choice(COLORS)
        out.append({"tag": "colors", "include": [{"class": c, "count": 1, "color": col}],
                    "prompt": f"a photo of {_a(col)} {c}"})
    for _ in range(COUNTS["position"]):
        a, b = rng.sample(COCO, 2)
        rel = rng.choice(RELATIONS)
        out.append({"tag": "position", "include": [{"class": b, "count": 1},
                                                   {"class": a, "count": 1,
                                                    "position": [rel, 0]}],
                    "prompt": f"a photo of {_a(a)} {rel} {_a(b)}"})
    for _ in range(COUNTS["color_attr"]):
        a, b = rng.sample(COCO, 2)
        ca, cb = rng.sample(COLORS, 2)
        out.append({"tag": "color_attr", "include": [{"class": a, "count": 1, "color": ca},
                                                     {"class": b, "count": 1, "color": cb}],
                    "prompt": f"a photo of {_a(ca)} {a} and {_a(cb)} {b}"})
    return out


def read_prompts(path: str | Path) -> list[dict]:
    """GenEval metadata JSONL: one object with at least "tag" and "prompt" per line."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            raise ValueError(f"{path} line {n}: not valid JSON") from None
        if not isinstance(d, dict) or not isinstance(d.get("prompt"), str) or "tag" not in d:
            raise ValueError(f"{path} line {n}: a GenEval record needs \"tag\" and \"prompt\"")
        out.append(d)
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def export(pipe, out: str | Path, per_prompt: int = 4, prompts: str | Path | None = None,
           seed: int = 0, limit: int | None = None, progress: bool = True) -> Path:
    """Write GenEval's layout for `pipe` (see the module notes); returns the folder. An
    existing folder is resumed: prompts whose samples are all there are skipped."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} is a file; give a folder to export into")
    metas = read_prompts(prompts) if prompts else our_prompts()
    metas = metas[:limit] if limit else metas
    s = pipe.default_sampling
    preset = {"guidance": pipe.default_guidance, "temperature": s.temperature,
              "top_k": s.top_k, "top_p": s.top_p, "images_per_prompt": per_prompt,
              "seed": seed}
    summary = out / "export.json"
    if summary.is_file() and read_json(summary).get("preset") != preset:
        raise ValueError(f"{out} holds an export with other settings ({summary}); choose a new "
                         f"folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(summary, {"model": pipe.name, "preset": preset, "prompts": str(prompts or
               "unimm (GenEval format, eval/geneval_export.py)"), "n_prompts": len(metas),
                         "image_size": pipe.image_size})
    from ..data.images import save_png
    for i, meta in enumerate(tqdm(metas, desc="geneval export", unit="prompt",
                                  disable=not progress)):
        d = out / f"{i:05d}"
        samples = [d / "samples" / f"{k:04d}.png" for k in range(per_prompt)]
        if all(p.is_file() for p in samples):
            continue
        images = pipe.generate(meta["prompt"], n=per_prompt, seed=seed + i)
        for img, p in zip(images, samples):
            save_png(img, p)
        write_text(d / "metadata.jsonl", json.dumps(meta) + "\n")
    return out

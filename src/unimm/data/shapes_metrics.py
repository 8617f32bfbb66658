"""ShapesWorld's metrics on top of the judge, as pure functions of (references, predictions).

Scenes are compared with `Scene.key()`: shape, colour, size and cell of every object (jitter is
not part of the answer). Every function returns plain floats / dicts ready for JSON.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from .geneval import CATEGORIES, GenevalPrompt
from .shapes import Scene
from .text import normalize_answer, parse_caption


def _mean(xs) -> float:
    xs = list(xs)
    return float(sum(xs) / len(xs)) if xs else float("nan")


def full_scene_exact(targets: Sequence[Scene], judged: Sequence[Scene]) -> float:
    """Fraction of generated images whose parsed scene equals the intended scene."""
    _same_len(targets, judged)
    return _mean(t.key() == j.key() for t, j in zip(targets, judged))


def geneval_scores(prompts: Sequence[GenevalPrompt], judged: Sequence[Scene]) -> dict:
    """Per-category accuracy and `overall` (the mean over categories, as GenEval reports)."""
    _same_len(prompts, judged)
    by = defaultdict(list)
    for p, s in zip(prompts, judged):
        by[p.category].append(p.satisfied_by(s))
    out = {c: _mean(by[c]) for c in CATEGORIES if c in by}
    out["overall"] = _mean(out.values())
    return out


def vqa_accuracy(kinds: Sequence[str], answers: Sequence[str], predictions: Sequence[str]) -> dict:
    """Exact match after normalisation (case, punctuation, articles, digits -> words)."""
    _same_len(answers, predictions)
    by = defaultdict(list)
    for k, a, p in zip(kinds, answers, predictions):
        by[k].append(normalize_answer(a) == normalize_answer(p))
    out = {"overall": _mean(x for v in by.values() for x in v)}
    out.update({f"kind/{k}": _mean(v) for k, v in sorted(by.items())})
    out["yes_rate"] = _mean(normalize_answer(p) == "yes" for p in predictions
                            if normalize_answer(p) in ("yes", "no"))
    return out


def caption_scores(scenes: Sequence[Scene], captions: Sequence[str],
                   references: Sequence[Sequence[str]] | None = None) -> dict:
    """`scene_correct`: the caption parses back into exactly the scene (any phrasing);
    `parsed`: it parses at all; `exact`: equals one of the reference strings."""
    _same_len(scenes, captions)
    parsed = [parse_caption(c) for c in captions]
    out = {
        "scene_correct": _mean(p is not None and p == list(s.key()) for p, s in zip(parsed, scenes)),
        "parsed": _mean(p is not None for p in parsed),
    }
    if references is not None:
        _same_len(references, captions)
        out["exact"] = _mean(normalize_answer(c) in {normalize_answer(r) for r in refs}
                             for c, refs in zip(captions, references))
    return out


def edit_scores(sources: Sequence[Scene], targets: Sequence[Scene],
                judged: Sequence[Scene]) -> dict:
    """`success`: the edited image parses to the target scene. `kept`: every object the edit
    should not touch (in both source and target) is still there unchanged."""
    _same_len(targets, judged)
    success, kept = [], []
    for src, tgt, out in zip(sources, targets, judged):
        success.append(tgt.key() == out.key())
        untouched = set(src.key()) & set(tgt.key())
        kept.append(untouched <= set(out.key()))
    return {"success": _mean(success), "kept": _mean(kept)}


def object_recall(targets: Sequence[Scene], judged: Sequence[Scene]) -> float:
    """Fraction of intended objects present with all attributes (partial credit view)."""
    hits = total = 0
    for t, j in zip(targets, judged):
        jk = set(j.key())
        hits += sum(k in jk for k in t.key())
        total += len(t.objects)
    return hits / total if total else float("nan")


def _same_len(a, b):
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} references vs {len(b)} predictions")

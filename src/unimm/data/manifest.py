"""Bring-your-own data: JSONL manifests of image files with captions, LLaVA-style conversations
and/or edits; and export of any built-in split to that format.

One JSON object per line; paths are relative to the manifest's folder (or absolute):

    {"id": "test-000001", "image": "images/000001.png",
     "caption": "A large red circle in the center.",
     "conversations": [{"from": "human", "value": "<image>\\nHow many shapes are there?"},
                       {"from": "gpt", "value": "one"}],
     "edit": {"instruction": "Make the circle blue.", "target": "images/000001_edit.png"},
     "scene": {...}}                      # optional ground truth (ShapesWorld exports)

`image` is required, plus at least one of caption / conversations / edit. Conversations follow
LLaVA: turns alternate human/gpt ("user"/"assistant" are accepted), start with a human turn and
end with a gpt turn; a leading "<image>" marker is optional. Unknown keys are errors (a typo
should not silently drop data). Every bad record is reported with its line number.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils.io import OutputPathError, parse_json
from . import digits as D
from .images import ImageError, load_image, save_png
from .shapes import Scene
from .splits import ShapesWorld, WorldConfig
from .text import questions

RECORD_KEYS = ("id", "image", "caption", "conversations", "edit", "scene")
EDIT_KEYS = ("instruction", "target")
_ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}
IMAGE_MARKER = "<image>"


class ManifestError(ValueError):
    """Raised with every bad record, one `line N: problem` per line."""

    def __init__(self, path, problems: list[tuple[int, str]]):
        self.problems = problems
        shown = "\n".join(f"  line {n}: {msg}" for n, msg in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{path}: {len(problems)} bad record(s):\n{shown}{more}")


@dataclass(frozen=True)
class Record:
    line: int
    id: str
    image: Path
    caption: str | None = None
    conversations: tuple[tuple[str, str], ...] = ()     # (role, text), image marker stripped
    edit_instruction: str | None = None
    edit_target: Path | None = None
    scene: dict | None = field(default=None, compare=False)

    def load_image(self) -> np.ndarray:
        return load_image(self.image, what=f"record {self.id} image")

    def load_edit_target(self) -> np.ndarray | None:
        return None if self.edit_target is None else load_image(self.edit_target)


def _check_image(path: Path) -> str | None:
    try:
        load_image(path)
    except ImageError as e:
        return str(e)
    return None


def _parse_record(obj, line: int, root: Path, check_images: bool) -> tuple[Record | None, list[str]]:
    errs: list[str] = []
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {type(obj).__name__}"]
    unknown = sorted(set(obj) - set(RECORD_KEYS))
    if unknown:
        errs.append(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(RECORD_KEYS)}")
    img = obj.get("image")
    if not isinstance(img, str) or not img:
        errs.append("'image' (a path string) is required")
        img_path = None
    else:
        img_path = (root / img) if not os.path.isabs(img) else Path(img)
        if check_images:
            e = _check_image(img_path)
            if e:
                errs.append(e)
    cap = obj.get("caption")
    if cap is not None and (not isinstance(cap, str) or not cap.strip()):
        errs.append("'caption' must be a non-empty string")
    turns = []
    conv = obj.get("conversations")
    if conv is not None:
        if not isinstance(conv, list) or not conv:
            errs.append("'conversations' must be a non-empty list of {from, value} turns")
        else:
            for k, t in enumerate(conv):
                if not isinstance(t, dict) or set(t) != {"from", "value"}:
                    errs.append(f"conversations[{k}] must be an object with exactly 'from' and 'value'")
                    continue
                role = _ROLES.get(t["from"])
                if role is None:
                    errs.append(f"conversations[{k}].from is {t['from']!r}; accepted: {', '.join(_ROLES)}")
                    continue
                if not isinstance(t["value"], str) or not t["value"].strip():
                    errs.append(f"conversations[{k}].value must be a non-empty string")
                    continue
                want = "human" if k % 2 == 0 else "gpt"
                if role != want:
                    errs.append(f"conversations[{k}] should be a {want} turn (turns alternate, human first)")
                    continue
                text = t["value"].replace(IMAGE_MARKER, "").strip() if k == 0 else t["value"].strip()
                turns.append((role, text))
            if len(conv) % 2:
                errs.append("conversations must end with a gpt turn (even number of turns)")
    ed = obj.get("edit")
    instr = tgt = None
    if ed is not None:
        if not isinstance(ed, dict) or set(ed) != set(EDIT_KEYS):
            errs.append(f"'edit' must be an object with exactly {', '.join(EDIT_KEYS)}")
        elif not isinstance(ed["instruction"], str) or not ed["instruction"].strip():
            errs.append("edit.instruction must be a non-empty string")
        elif not isinstance(ed["target"], str) or not ed["target"]:
            errs.append("edit.target must be a path string")
        else:
            instr = ed["instruction"]
            tgt = (root / ed["target"]) if not os.path.isabs(ed["target"]) else Path(ed["target"])
            if check_images:
                e = _check_image(tgt)
                if e:
                    errs.append(f"edit.target: {e}")
    if cap is None and conv is None and ed is None:
        errs.append("a record needs at least one of 'caption', 'conversations', 'edit'")
    scene = obj.get("scene")
    if scene is not None:
        try:
            Scene.from_dict(scene)
        except (KeyError, TypeError, ValueError) as e:
            errs.append(f"'scene' is not a valid ShapesWorld scene ({e})")
    rid = obj.get("id", f"line{line}")
    if not isinstance(rid, str):
        errs.append("'id' must be a string")
    if errs:
        return None, errs
    return Record(line, rid, img_path, cap, tuple(turns), instr, tgt, scene), []


def load_manifest(path: str | os.PathLike, check_images: bool = True) -> list[Record]:
    """Read and validate a JSONL manifest; raise ManifestError listing every bad line."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(path, [(0, "manifest file not found")])
    root = path.parent
    records, problems, ids = [], [], {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append((n, f"not UTF-8 text (byte {e.start} of the line is "
                                    f"0x{raw[e.start]:02x}); save the manifest as UTF-8"))
                continue
            if not line.strip():
                continue
            try:
                obj = parse_json(line)
            except ValueError as e:
                problems.append((n, f"not valid JSON ({e})"))
                continue
            rec, errs = _parse_record(obj, n, root, check_images)
            problems.extend((n, e) for e in errs)
            if rec is not None:
                if rec.id in ids:
                    problems.append((n, f"duplicate id {rec.id!r} (first on line {ids[rec.id]})"))
                ids[rec.id] = n
                records.append(rec)
    if problems:
        raise ManifestError(path, problems)
    if not records:
        raise ManifestError(path, [(0, "the manifest holds no records")])
    return records


# ----------------------------------------------------------------------------------------------
# Export of built-in splits

def shapes_records(world: ShapesWorld, n: int, n_questions: int = 3) -> list[dict]:
    """Manifest records (with in-memory images under '_images') for n scenes of a split:
    per scene one understanding record (caption + questions) and one edit record."""
    out = []
    for i in range(n):
        cap = world.caption_example(i)
        rng = world.rng(i, "vqa")
        conv = []
        for k, qa in enumerate(questions(cap.scene, rng, n_questions)):
            conv.append({"from": "human", "value": (IMAGE_MARKER + "\n" if k == 0 else "") + qa.question})
            conv.append({"from": "gpt", "value": qa.answer})
        rid = f"{world.split}-{i:06d}"
        out.append({"id": rid, "image": f"images/{rid}.png", "caption": cap.target_text,
                    "conversations": conv, "scene": cap.scene.to_dict(),
                    "_images": {f"images/{rid}.png": cap.image}})
        e = world.edit_example(i)
        eid = f"{rid}-edit"
        out.append({"id": eid, "image": f"images/{eid}.png",
                    "edit": {"instruction": e.text, "target": f"images/{eid}-target.png"},
                    "scene": e.scene.to_dict(),
                    "_images": {f"images/{eid}.png": e.image,
                                f"images/{eid}-target.png": e.target_image}})
    return out


def write_manifest(records: list[dict], out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write records (images taken from each record's '_images') into out_dir/manifest.jsonl.

    Everything is written into a temporary sibling folder first and renamed into place, so an
    interrupted export leaves nothing behind."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputPathError(f"{out_dir} is a file; give a folder to export into")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} exists and is not empty; choose another folder "
                                  "or pass overwrite (--force)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        lines = []
        for r in records:
            for rel, arr in r.get("_images", {}).items():
                save_png(arr, tmp / rel)
            lines.append(json.dumps({k: v for k, v in r.items() if k != "_images"}))
        (tmp / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "manifest.jsonl"


def export_split(split: str, n: int, out_dir, config: WorldConfig | None = None,
                 overwrite: bool = False) -> Path:
    """Write n scenes of a built-in ShapesWorld split as PNG files + manifest.jsonl."""
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    return write_manifest(shapes_records(ShapesWorld(split, config), n), out_dir, overwrite)


def digits_records(split: str, image_size: int = 32, n: int | None = None) -> list[dict]:
    """Manifest records for the real digits: caption "the digit 7" + one question."""
    d = D.Digits(split, image_size=image_size)
    out = []
    for i in range(len(d) if n is None else min(n, len(d))):
        lab = d.label(i)
        rid = f"digits-{split}-{i:04d}"
        out.append({"id": rid, "image": f"images/{rid}.png", "caption": D.prompt(lab),
                    "conversations": [{"from": "human", "value": IMAGE_MARKER + "\n" + D.question()},
                                      {"from": "gpt", "value": D.answer(lab)}],
                    "_images": {f"images/{rid}.png": d.image(i)}})
    return out


def export_digits(split: str, out_dir, image_size: int = 32, n: int | None = None,
                  overwrite: bool = False) -> Path:
    """Write the real digits of a split as PNG files + manifest.jsonl."""
    return write_manifest(digits_records(split, image_size, n), out_dir, overwrite)

import json

import numpy as np
import pytest

from unimm.data.manifest import ManifestError, export_split, load_manifest
from unimm.data.shapes import Scene
from unimm.data.splits import ShapesWorld


def test_export_round_trips_identically(tmp_path):
    path = export_split("test", 12, tmp_path / "exp")
    recs = load_manifest(path)
    w = ShapesWorld("test")
    assert len(recs) == 24
    for i in range(12):
        r, e = recs[2 * i], recs[2 * i + 1]
        cap = w.caption_example(i)
        assert np.array_equal(r.load_image(), cap.image)
        assert r.caption == cap.target_text
        assert Scene.from_dict(r.scene) == cap.scene
        assert len(r.conversations) >= 2 and r.conversations[-1][0] == "gpt"
        ed = w.edit_example(i)
        assert e.edit_instruction == ed.text
        assert np.array_equal(e.load_image(), ed.image)
        assert np.array_equal(e.load_edit_target(), ed.target_image)
    # export is deterministic: a second export writes byte-identical manifests
    path2 = export_split("test", 12, tmp_path / "exp2")
    assert path.read_text() == path2.read_text()


def test_export_refuses_to_clobber_and_leaves_nothing_on_failure(tmp_path):
    export_split("val", 2, tmp_path / "a")
    with pytest.raises(FileExistsError, match="not empty"):
        export_split("val", 2, tmp_path / "a")
    with pytest.raises(ValueError):
        export_split("nope", 2, tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]   # no temp folders left


def _write(tmp_path, lines):
    p = tmp_path / "m.jsonl"
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
    return p


def test_malformed_manifests_give_line_numbered_errors(tmp_path):
    export_split("test", 1, tmp_path / "d")
    img = str(tmp_path / "d" / "images" / "test-000000.png")
    (tmp_path / "junk.png").write_bytes(b"not an image")
    p = _write(tmp_path, [
        {"image": img, "caption": "fine"},                                    # 1 ok
        "{broken json",                                                       # 2
        {"image": img, "captoin": "typo"},                                    # 3
        {"image": str(tmp_path / "missing.png"), "caption": "x"},             # 4
        {"image": str(tmp_path / "junk.png"), "caption": "x"},                # 5
        {"image": img, "conversations": [{"from": "gpt", "value": "hi"}]},   # 6
        {"image": img, "edit": {"instruction": "", "target": img}},           # 7
        {"image": img, "caption": "dup", "id": "a"},                         # 8
        {"image": img, "caption": "dup", "id": "a"},                         # 9
        [1, 2],                                                               # 10
    ])
    with pytest.raises(ManifestError) as ei:
        load_manifest(p)
    lines = {n for n, _ in ei.value.problems}
    assert lines == {2, 3, 4, 5, 6, 7, 9, 10}
    msg = str(ei.value)
    assert "line 3: unknown key(s) captoin" in msg and "valid keys" in msg
    assert "line 4" in msg and "no such file" in msg
    assert "line 5" in msg and "cannot read" in msg


def test_llava_roles_and_image_marker(tmp_path):
    export_split("test", 1, tmp_path / "d")
    img = str(tmp_path / "d" / "images" / "test-000000.png")
    p = _write(tmp_path, [{"image": img, "conversations": [
        {"from": "user", "value": "<image>\nWhat is this?"}, {"from": "assistant", "value": "a circle"},
        {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "yes"}]}])
    (r,) = load_manifest(p)
    assert r.conversations == (("human", "What is this?"), ("gpt", "a circle"),
                               ("human", "Sure?"), ("gpt", "yes"))


def test_empty_and_missing_manifest(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "none.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(ManifestError, match="no records"):
        load_manifest(tmp_path / "e.jsonl")


def test_digits_export_round_trips(tmp_path):
    from unimm.data import digits as D
    from unimm.data.manifest import export_digits
    recs = load_manifest(export_digits("test", tmp_path / "dg", n=15))
    d = D.Digits("test")
    assert len(recs) == 15
    for i, r in enumerate(recs):
        assert np.array_equal(r.load_image(), d.image(i))
        assert r.caption == D.prompt(d.label(i))
        assert D.parse_digit_answer(r.conversations[1][1]) == d.label(i)

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from unimm.data.shapes import render, scene_from_seed


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "unimm.cli.main", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_judge_selftest_prints_one_json_object():
    r = run("judge", "--selftest", "--n", "300", "--seed", "1")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["clean_exact"] >= 0.995 and d["perturbed_exact"] >= 0.98


@pytest.mark.slow
def test_judge_image_and_errors(tmp_path):
    sc = scene_from_seed(11)
    Image.fromarray(render(sc)).save(tmp_path / "s.png")
    r = run("judge", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert [o["shape"] for o in d["objects"]] == [o.shape for o in sc.objects]
    r = run("judge", str(tmp_path / "missing.png"))
    assert r.returncode == 2 and "no such file" in r.stderr and "Traceback" not in r.stderr
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "small.png")
    r = run("judge", str(tmp_path / "small.png"))
    assert r.returncode == 2 and "square RGB" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_data_preview_export_check(tmp_path):
    r = run("data", "preview", "--n", "4", "-o", str(tmp_path / "g.png"), "--task", "edit")
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "g.png").size[0] > 100
    r = run("data", "export", "--split", "val", "--n", "3", "-o", str(tmp_path / "exp"))
    assert r.returncode == 0, r.stderr
    r = run("data", "check", str(tmp_path / "exp" / "manifest.jsonl"))
    assert r.returncode == 0 and "6 valid records" in r.stdout
    r = run("data", "export", "--split", "val", "--n", "3", "-o", str(tmp_path / "exp"))
    assert r.returncode == 2 and "--force" in r.stderr
    r = run("data", "preview", "--task", "nope", "-o", str(tmp_path / "x.png"))
    assert r.returncode == 2 and "known: caption" in r.stderr
    r = run("data", "preview", "--bogus")
    assert r.returncode == 2 and "No such option" in r.stderr


@pytest.mark.slow
def test_unknown_precision_is_refused_before_anything_loads(tmp_path):
    out = tmp_path / "e.json"
    for cmd in (("eval", "--precision", "fp16", "-o", str(out)), ("serve", "--precision", "int8")):
        r = run(*cmd)
        assert r.returncode == 2 and "choose fp32 or bf16" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    assert not out.exists()

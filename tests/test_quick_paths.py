"""Cheap, in-process checks of the command line, the benches' option handling and reports, the
previews and the demo: the fast tier (`pytest -m "not slow"`) touches every module with them;
the end-to-end runs of the same commands are in the slow tier."""

from __future__ import annotations

import json

import pytest

from helpers import cli


@pytest.mark.parametrize("args, code, needle", [
    (["--help"], 0, "Usage"),
    (["data", "nosuch"], 2, "No such command"),
    (["generate", "x", "--n", "0"], 2, "--n"),
    (["bench", "speed", "--paradigms", "ar,nope"], 2, "available"),
    (["bench", "speed", "--sizes", "huge"], 2, "available"),
    (["bench", "speed", "--device", "tpu"], 2, "device"),
    (["bench", "paradigms", "--minutes", "1", "--paradigms", "nope"], 2, "available"),
    (["bench", "decoding", "--guidance", "abc"], 2, "comma-separated"),
    (["bench", "peers", "--only", "nope"], 2, "nope"),
    (["serve", "--max-batch", "999"], 2, "max_batch"),
])
def test_commands_parse_and_refuse_in_one_line(args, code, needle, capsys, tmp_path):
    got, out, err = cli(*args, "-o", str(tmp_path / "x"), capsys=capsys) if args[0] == "bench" \
        and args[1] != "peers" and args[1] != "decoding" else cli(*args, capsys=capsys)
    assert got == code, (out, err)
    assert needle in (out if code == 0 else err)
    if code:
        assert len(err.strip().splitlines()) == 1 and err.startswith("unimm: error:")
    assert not (tmp_path / "x").exists()


def test_data_commands_in_process(tmp_path, capsys):
    assert cli("data", "preview", "--n", "2", "-o", tmp_path / "g.png", capsys=capsys)[0] == 0
    assert (tmp_path / "g.png").stat().st_size > 500
    assert cli("data", "export", "--n", "2", "-o", tmp_path / "exp", capsys=capsys)[0] == 0
    code, out, _ = cli("data", "check", tmp_path / "exp" / "manifest.jsonl", capsys=capsys)
    assert code == 0 and "valid records" in out
    code, out, _ = cli("judge", tmp_path / "exp" / "images" / "test-000000.png", capsys=capsys)
    assert code == 0 and json.loads(out)["objects"]


def test_bench_world_and_reports():
    from unimm.bench.decoding import markdown as decoding_md
    from unimm.bench.decoding import parse_vary
    from unimm.bench.paradigms import markdown as paradigms_md
    from unimm.bench.world import bench_world
    from unimm.paradigms.masked import Masked
    from unimm.paradigms.sequence import Vocab
    from unimm.utils.config import ConfigError
    from unimm.utils.machine import conditions
    r = bench_world(n=100, repeats=1)
    assert r["scenes_per_s"]["median"] > 0 and r["n"] == 100
    masked = Masked(Vocab(40, 16, (2, 2)))
    assert parse_vary(["confidence_noise=0,3"], masked) == {"confidence_noise": [0, 3]}
    with pytest.raises(ConfigError, match="no setting 'nope'"):
        parse_vary(["nope=1"], masked)
    c = conditions()
    row = {"guidance": 1.5, "temperature": 0.0, "top_p": 1.0, "t2i_full_scene": 0.5,
           "geneval_overall": 0.25, "edit_success": None, "images_per_s": 3.0,
           "confidence_noise": 3}
    md = decoding_md({"vary": {"confidence_noise": [3]}, "conditions": c, "n_t2i": 2,
                      "n_geneval": 1, "n_edit": 0, "paradigm": "masked", "rows": [row]})
    assert "| 3 | 1.500 | 0.000 | 1.000 | 0.500 | - | 0.250 | - | 3.000 |" in md
    md = paradigms_md({"conditions": c, "minutes": 1.0, "config": "configs/tiny.toml",
                       "overrides": [], "rows": [{"paradigm": "ar", "geneval/counting": 0.5,
                                                  "settings": {"cfg_dropout": 0.1}}]})
    assert "| ar |" in md and "0.500" in md and "cfg_dropout = 0.1" in md
    from unimm.bench.serve_load import markdown as serve_md
    row = {"kind": "chat", "requests_per_s": 1.5, "p50_ms": 10, "p99_ms": 20, "errors": 0,
           "overloaded_503": 0, "server_batches": {"by_kind": {"answer": {"rows": 4, "calls": 2}}}}
    md = serve_md({"clients": 2, "seconds": 1.0, "threads": 1,
                   "modes": {"batched": {"rows": [row], "server_peak_rss_mb": 100}}})
    assert "| batched | chat | 1.5 | 10 | 20 | 0 | 0 | 2.0 | 100 |" in md


def test_demo_on_the_default_model(tmp_path):
    from unimm.demo import run_demo
    report = run_demo(tmp_path / "demo", None, seed=0, n=2).read_text()
    assert "generate.png" in report

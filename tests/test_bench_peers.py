"""`unimm bench peers`: a quick smoke run against both peers, the weight mapping that makes
x-transformers our exact shape, and option errors."""

import json
import subprocess
import sys

import pytest

from unimm.bench.peers import TRAIN_SHAPES, markdown, xt_parity
from unimm.model.backbone import BackboneConfig

PACKED_ROWS = 256   # unimm.fast.linear.PACKED_MIN_ROWS: projections from here on are packed


def _peers(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "unimm", "bench", "peers", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_bench_peers_quick_smoke(tmp_path):
    r = _peers("--only", "xtransformers,transfusion,janus", "--quick", "-o", str(tmp_path / "p"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "p" / "peers.json").read_text())
    assert list(res["peers"]) == ["xtransformers", "transfusion", "janus"]
    assert res["conditions"]["loadavg_1_5_15"] and res["threads"] == 1
    for name, job in res["peers"].items():
        assert "error" not in job, job
        assert job["rows"], name
        for row in job["rows"]:
            assert row["ours"] > 0 and row["theirs"] > 0 and row["ratio"] > 0
            assert row["ratio_cpu_time"] > 0
            assert row["met"] == (row["ratio"] >= row["bar"])
    xt = res["peers"]["xtransformers"]
    assert [row["bar"] for row in xt["rows"]] == [1.0]
    run = xt["runs"][0]
    assert run["ours"]["tokens_per_step"] == run["x-transformers"]["tokens_per_step"]
    assert run["ours"]["losses"][0] == pytest.approx(run["x-transformers"]["losses"][0], rel=0.05)
    # both of x-transformers' attention paths ran; the faster one is what we are compared with
    variants = run["x-transformers_variants"]
    assert len(variants) == 2 and run["x-transformers_best"] in variants
    assert run["x-transformers"]["step"]["median_s"] == min(
        v["step"]["median_s"] for v in variants.values())
    # same shape: the only extra parameters are the GLU biases x-transformers cannot drop
    shape = TRAIN_SHAPES["quick"]
    hidden = BackboneConfig(dim=shape["dim"], n_heads=shape["n_heads"]).mlp_hidden
    assert run["param_difference"] == 2 * hidden * shape["n_layers"]
    tf = res["peers"]["transfusion"]
    assert tf["equal_evaluations"] and [row["bar"] for row in tf["rows"]] == [2.0, 2.0]
    for key, o in tf["ours"]["runs"].items():
        theirs = tf["theirs"]["runs"][key]
        assert o["velocity_evaluations"] == theirs["velocity_evaluations"] == 2   # quick: 2 steps
        assert o["transformer_forwards"] == 3             # prefix once + 1 per evaluation
        assert theirs["transformer_forwards"] > o["transformer_forwards"]   # CFG unbatched
    jn = res["peers"]["janus"]                           # same weights, identical greedy output
    assert jn["detail"]["identical_outputs"] and [row["bar"] for row in jn["rows"]] == [3, 3, 2, 2]
    for row in jn["rows"]:             # each job's compute floor: counted FLOPs / measured peak
        fl = row["floor"]
        assert fl["flops"] > 0 and fl["peak_gflops"] > 0
        assert fl["floor_s"] == pytest.approx(fl["flops"] / (fl["peak_gflops"] * 1e9))
        # theirs / floor over ours / floor is the row's ratio (same medians)
        assert fl["theirs_over_floor"] / fl["ours_over_floor"] == pytest.approx(row["ratio"])
        assert "compute floor" in row["what"] and "machine floor" in row["what"]
        # the machine floor: measured products + keys/values read once at the read bandwidth
        assert 0 < fl["kernel_s"] and 0 < fl["kv_bytes"] and 0 < fl["read_gbps"]
        assert fl["machine_s"] == pytest.approx(fl["kernel_s"] + fl["kv_s"])
        assert fl["kv_s"] == pytest.approx(fl["kv_bytes"] / (fl["read_gbps"] * 1e9))
        assert fl["theirs_over_machine"] / fl["ours_over_machine"] == pytest.approx(row["ratio"])
    gen = jn["detail"]["jobs"]
    assert gen["generate_b4"]["floor"]["flops"] > gen["generate_b1"]["floor"]["flops"]
    md = (tmp_path / "p" / "peers.md").read_text()
    assert md == markdown(res) and "| x-transformers" in md and "| transfusion-pytorch" in md
    assert "| transformers JanusForConditionalGeneration" in md


def test_xtransformers_carries_our_weights_exactly():
    assert xt_parity(TRAIN_SHAPES["quick"]) < 1e-4


@pytest.mark.slow
def test_bench_peers_rejects_unknown_names(tmp_path):
    r = _peers("--only", "xtransformers,nope", "--quick", "-o", str(tmp_path / "x"), timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr and "available: xtransformers" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_compute_floor_counts_the_packed_projections():
    """Prompt fills run their projections on packed oneDNN weights, which the FLOP counter
    cannot see; the floor counts them as the F.linear products they are."""
    import torch

    from unimm.bench.peer_janus import record_work
    from unimm.model import ops
    w, x = torch.randn(64, 32), torch.randn(PACKED_ROWS, 32)
    installed = ops.linear
    with torch.inference_mode():
        assert record_work(lambda a: ops.linear(a, w), x)["flops"] == 2 * x.shape[0] * 32 * 64
        assert ops.linear is installed                                  # restored


def test_work_recorder_counts_products_and_attention_reads():
    """The machine floor's inputs: every 2-D product's shape (projections through the packed
    path included, as F.linear) and the key/value bytes attention is handed."""
    import torch
    import torch.nn.functional as F

    from unimm.bench.peer_janus import record_work
    from unimm.bench.machine import gemm_seconds
    from unimm.model import ops
    w = torch.randn(48, 32)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8), torch.randn(2, 4, 7, 8)

    def job(x):
        ops.linear(x, w)                                        # packed: 3 x 100 rows
        F.linear(x[0], w, torch.zeros(48))                      # 100 rows, with a bias
        x[0, :2] @ w.t()                                        # mm: 2 rows
        F.scaled_dot_product_attention(q, k, v)
    with torch.inference_mode():
        work = record_work(job, torch.randn(3, PACKED_ROWS // 2 + 100, 32))
        rows = PACKED_ROWS // 2 + 100
        assert sorted(work["gemms"]) == sorted([[3 * rows, 32, 48, 1], [rows, 32, 48, 1],
                                                [2, 32, 48, 1]])
        assert work["kv_bytes"] == 2 * k.numel() * 4
        t = gemm_seconds([(16, 32, 48)], torch.device("cpu"), calls=3)
        assert list(t) == [(16, 32, 48)] and 0 < t[(16, 32, 48)] < 1

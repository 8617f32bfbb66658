"""`unimm bench speed`: a smoke run on the tiny config, option errors, and the decode-floor
arithmetic."""

import json
import subprocess
import sys

import pytest

from unimm.bench.machine import bandwidth_use, decode_step_bytes, kv_bytes_per_position
from unimm.bench.speed_report import markdown
from unimm.model import ops


def _speed(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "unimm", "bench", "speed", *args],
                          capture_output=True, text=True, timeout=timeout)


def _numbers(obj, path=""):
    """Every number under obj (nested dicts), with its path; bools are not numbers here."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}/{k}")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.slow
def test_bench_speed_quick_smoke(tmp_path):
    r = _speed("--config", "configs/tiny.toml", "--paradigms", "ar,masked,flow", "--quick",
               "--compile", "--bf16", "-o", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "s" / "speed.json").read_text())
    m = res["machine"]
    for k in ("matmul_fp32", "matmul_bf16"):
        assert m[k]["peak_gflops"] > 0
    assert m["copy"]["gb_per_s"] > 0
    assert [row["paradigm"] for row in res["rows"]] == ["ar", "masked", "flow"]
    for row in res["rows"]:
        t, g, u = row["training"], row["generation"], row["understanding"]
        for mode in ("model_only", "end_to_end"):
            assert t[mode]["tokens_per_s"] > 0 and 0 < t[mode]["mfu"] and t[mode]["median_s"] > 0
        assert t["mfu_peak"] == "fp32"                        # tiny.toml trains in fp32
        assert set(g["runs"]) == {"b1_g1.0", "b1_g1.5", "b16_g1.0", "b16_g1.5"}
        assert g["s_per_image_b1"] > 0 and g["s_per_image_b16"] > 0 and g["s_per_fe_b1"] > 0
        assert g["cfg_cost"]["b1"] > 0 and g["cache"]["speedup"] > 0
        assert all(run["peak_mb"] > 0 for run in g["runs"].values())
        assert u["ttft_s"] > 0 and u["tokens_per_s"] > 0 and u["tokens"] == u["max_new"]
        timed = {k: v for k, v in g.items() if k not in ("sampling", "cache")}
        for path, x in _numbers({"t": t, "g": timed, "u": u}):
            if not path.endswith(("above_start_mb", "agreement", "repeats")):
                assert x > 0, path
    fe = {row["paradigm"]: row["generation"]["fe_per_image"] for row in res["rows"]}
    assert fe["masked"] < fe["ar"]
    ar = res["rows"][0]["generation"]
    assert ar["bandwidth"]["b1_g1.0"]["bandwidth_utilisation"] > 0
    assert ar["runs"]["b1_g1.0"]["backbone_calls"] == fe["ar"]     # 1 prefill + N - 1 steps
    assert res["rows"][1]["generation"]["bandwidth"] is None       # parallel decoders: none
    comp = res["rows"][0]["generation_compiled"]                   # compiled steps: ar only
    assert comp["s_per_image_b1"] > 0 and comp["bandwidth"]["b1_g1.5"]["step_s"] > 0
    if ops.fast is not None:        # compiled steps bypass the backbone; without unimm.fast
        assert comp["runs"]["b1_g1.0"]["backbone_calls"] == 1      # they are the eager ones
    assert [bool(row.get("generation_compiled")) for row in res["rows"]] == [True, False, False]
    both = [row.get("generation_compiled_bf16") for row in res["rows"]]   # compiled + bf16: ar
    assert both[0]["s_per_image_b16"] > 0 and both[0]["cfg_cost"]["b1"] > 0 and not any(both[1:])
    for row in res["rows"]:                                        # bf16 sampling: every one
        half = row["generation_bf16"]
        assert half["s_per_image_b1"] > 0 and half["cfg_cost"]["b1"] > 0
    md = (tmp_path / "s" / "speed.md").read_text()
    for section in ("Machine constants", "Training", "Generation", "Cache gains",
                    "memory floor", "Compiled decoding", "bf16 autocast", "Understanding",
                    "Compiled decoding under bf16",
                    "| flow |"):
        assert section in md
    assert md == markdown(res)
    assert (tmp_path / "s" / "speed.png").stat().st_size > 1000


@pytest.mark.parametrize("args,msg", [(("--paradigms", "ar,nope"), "available"),
                                      (("--sizes", "huge"), "available"),
                                      (("--device", "tpu"), "device")])
@pytest.mark.slow
def test_bench_speed_rejects_bad_options(tmp_path, args, msg):
    r = _speed("--config", "configs/tiny.toml", "--quick", *args, "-o", str(tmp_path / "x"),
               timeout=120)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_decode_floor_arithmetic():
    # 2 layers, 4 kv heads, head dim 8, fp32: 2 * 2 * 4 * 8 * 4 = 512 bytes per position
    kv = kv_bytes_per_position(2, 4, 8, 4)
    assert kv == 512
    # 1e6 weight bytes + 3 rows x 100 positions x 512 = 1,153,600 bytes per step
    b = decode_step_bytes(1e6, kv, rows=3, context=100)
    assert b == 1e6 + 3 * 100 * 512
    # at 1e9 bytes/s the floor is 1.1536 ms; a 4.6144 ms step is 4x the floor, 25 % use
    u = bandwidth_use(b, step_s=4 * b / 1e9, bandwidth=1e9)
    assert u["floor_s"] == pytest.approx(1.1536e-3)
    assert u["step_over_floor"] == pytest.approx(4.0)
    assert u["bandwidth_utilisation"] == pytest.approx(0.25)

"""Training, checkpoints, the Pipeline and the CLI on a tiny run (seconds)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unimm.data.images import ImageError
from unimm.data.splits import ShapesWorld
from unimm.paradigms.sampling import SamplingConfig
from unimm.pipeline import InputError, Pipeline
from unimm.runs import CheckpointError, RunConfig, RunError
from unimm.utils.config import load_config
from helpers import new_trainer


def tiny(tok, *over):
    return load_config(RunConfig, "configs/tiny.toml", [f"image_tokenizer_path={tok}", *over])


@pytest.fixture(scope="session")
def tiny_run(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tr = new_trainer(tiny(tiny_tokenizer), d, progress=False)
    tr.fit()
    return d, tr


def test_kill_and_resume_gives_the_same_next_loss(tiny_tokenizer, tmp_path):
    cfg = tiny(tiny_tokenizer, "train.ema=0.9")
    a = new_trainer(cfg, tmp_path / "a", progress=False)
    losses = [a.train_step()["loss"] for _ in range(5)]
    b = new_trainer(cfg, tmp_path / "b", progress=False)
    for _ in range(3):
        b.train_step()
    b.checkpoint()
    del b                                              # "kill"
    c = new_trainer(cfg, tmp_path / "b", progress=False)
    assert c.resume() and c.step == 3
    nxt = [c.train_step()["loss"] for _ in range(2)]
    assert nxt == pytest.approx(losses[3:], rel=1e-6, abs=1e-7)
    assert losses[3] != losses[2]


@pytest.mark.slow
def test_resuming_a_run_whose_budget_is_spent_takes_no_step(tiny_tokenizer, tmp_path):
    """`unimm train` on a finished wall-clock run (e.g. a bench rerun after a crash) resumes
    and stops at once: same step, same weights."""
    cfg = tiny(tiny_tokenizer)
    a = new_trainer(cfg, tmp_path / "r", progress=False)
    a.fit(minutes=0.002)
    step, w = a.step, (tmp_path / "r" / "model.safetensors").read_bytes()
    b = new_trainer(cfg, tmp_path / "r", progress=False)
    assert b.resume() and b.step == step
    assert b.fit(minutes=0.002)["step"] == step
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == w


@pytest.mark.slow
def test_training_writes_logs_curves_and_weights(tiny_run):
    d, tr = tiny_run
    for f in ("config.json", "model.safetensors", "metrics.csv", "curves.png",
              "tokenizer/image/tokenizer.json", "tokenizer/text/text_tokenizer.json", "ckpt/state.json"):
        assert (d / f).is_file(), f
    st = json.loads((d / "ckpt" / "state.json").read_text())
    assert st["step"] == 12
    assert not any(p.name.startswith(".") for p in d.iterdir())     # no temp leftovers


def test_saved_run_reloads_to_identical_outputs(tiny_run):
    d, tr = tiny_run
    live = Pipeline(tr.parts, model=tr.model.eval())
    loaded = Pipeline.load(d, device="cpu")
    w = ShapesWorld("test")
    imgs = [w.image(i) for i in range(3)]
    qs = ["How many shapes are there?", "What color is the circle?", "Describe the picture."]
    assert live.answer(imgs, qs) == loaded.answer(imgs, qs)
    for a, b in zip(live.draw(["a red circle", "two squares"]), loaded.draw(["a red circle", "two squares"])):
        assert np.array_equal(a, b)
    e1 = live.edit(imgs[0], "Remove the circle.", seed=1, temperature=1.0)
    e2 = loaded.edit(imgs[0], "Remove the circle.", seed=1, temperature=1.0)
    assert np.array_equal(e1, e2)


def test_edits_use_their_own_default_guidance(tiny_run, tiny_tokenizer):
    from unimm.runs import EvalConfig
    d, _ = tiny_run
    pipe = Pipeline.load(d, device="cpu")
    assert pipe.default_edit_guidance == pipe.default_guidance      # not set: the same
    img = ShapesWorld("test").image(0)
    pipe.default_edit_guidance = 4.0        # what a run with eval.edit_guidance = 4 sets
    seen, generate = [], pipe.paradigm.generate_images

    def spy(model, turns, guidance, *rest):
        seen.append((turns[0].task, guidance))
        return generate(model, turns, guidance, *rest)
    pipe.paradigm.generate_images = spy
    pipe.draw(["Make the circle red."], [img])
    pipe.draw(["a red circle"])
    pipe.draw(["Make the circle red."], [img], guidance=2.0)
    assert seen == [("edit", 4.0), ("t2i", pipe.default_guidance), ("edit", 2.0)]
    assert tiny(tiny_tokenizer, "eval.edit_guidance=1.0").eval.edit_guidance == 1.0
    with pytest.raises(ValueError, match="edit_guidance"):
        EvalConfig(edit_guidance=30.0)


@pytest.mark.slow
def test_pipeline_rejects_bad_inputs(tiny_run, tmp_path):
    d, _ = tiny_run
    pipe = Pipeline.load(d, device="cpu")
    img = ShapesWorld("test").image(0)
    with pytest.raises(InputError, match="empty"):
        pipe.generate("   ")
    with pytest.raises(InputError, match="characters"):
        pipe.generate("a red circle " * 200)
    with pytest.raises(InputError, match="n must"):
        pipe.generate("a circle", n=0)
    with pytest.raises(InputError, match="guidance"):
        pipe.generate("a circle", guidance=-1)
    with pytest.raises(InputError, match="top_p"):
        pipe.generate("a circle", top_p=0)
    with pytest.raises(InputError, match="string"):
        pipe.ask(img, 42)
    with pytest.raises(ImageError, match="no such file"):
        pipe.caption(tmp_path / "missing.png")
    Image.new("RGB", (8000, 8000)).save(tmp_path / "huge.png")
    with pytest.raises(ImageError, match="over the limit"):
        pipe.caption(tmp_path / "huge.png")
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(tmp_path / "rgba.png")
    with pytest.raises(ImageError, match="transparent"):
        pipe.caption(tmp_path / "rgba.png")
    Image.new("L", (32, 32)).save(tmp_path / "gray.png")
    with pytest.raises(ImageError, match="greyscale"):
        pipe.caption(tmp_path / "gray.png")
    with pytest.raises(ImageError, match="32x32"):
        pipe.caption(np.zeros((64, 64, 3), np.uint8))


def test_corrupt_and_mismatched_checkpoints(tiny_run, tmp_path):
    d, _ = tiny_run
    bad = tmp_path / "bad"
    shutil.copytree(d, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[: len(w.read_bytes()) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        Pipeline.load(bad, device="cpu")
    mism = tmp_path / "mism"
    shutil.copytree(d, mism)
    cfg = json.loads((mism / "config.json").read_text())
    cfg["config"]["model"]["n_layers"] = 2
    (mism / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        Pipeline.load(mism, device="cpu")
    (mism / "config.json").write_text("{not json")
    with pytest.raises(RunError, match="not valid JSON"):
        Pipeline.load(mism, device="cpu")
    with pytest.raises(RunError, match="no run folder"):
        Pipeline.load(tmp_path / "nothing", device="cpu")


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "unimm.cli.main", *args], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_cli_inference_commands(tiny_run, tmp_path, capsys):
    from helpers import cli
    d, _ = tiny_run
    img = tmp_path / "s.png"
    Image.fromarray(ShapesWorld("test").image(1)).save(img)
    r = _cli("ask", str(img), "How many shapes are there?", "--run", str(d))   # a real process
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    code, _, err = cli("generate", "a red circle", "-o", tmp_path / "g.png", "--n", "2", "--run", d,
                       "--temperature", "1", "--seed", "3", capsys=capsys)
    assert code == 0, err
    assert (tmp_path / "g_0.png").is_file() and (tmp_path / "g_1.png").is_file()
    code, _, err = cli("edit", img, "Remove the circle.", "-o", tmp_path / "e.png", "--run", d,
                       capsys=capsys)
    assert code == 0 and (tmp_path / "e.png").is_file(), err
    for args, msg in [(("generate", "", "--run", str(d)), "empty"),
                      (("caption", str(tmp_path / "nope.png"), "--run", str(d)), "no such file"),
                      (("ask", str(img), "hi", "--run", str(tmp_path)), "no config.json")]:
        code, _, err = cli(*args, capsys=capsys)
        assert code == 2 and msg in err and "Traceback" not in err, err


@pytest.mark.slow
def test_train_cli_rejects_unknown_keys(tmp_path):
    r = _cli("train", "configs/tiny.toml", "--set", "train.lrr=1", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown config key train.lrr" in r.stderr


@pytest.mark.slow
def test_demo_runs_on_any_run(tiny_run, tmp_path):
    d, _ = tiny_run
    r = _cli("demo", "--run", str(d), "-o", str(tmp_path / "demo"), "--seed", "0")
    assert r.returncode == 0, r.stderr
    report = (tmp_path / "demo" / "report.md").read_text()
    for png in ("questions.png", "generate.png", "edit.png"):
        assert (tmp_path / "demo" / png).is_file() and png in report
    assert "answers right" in report


def test_answers_fit_a_short_context(tiny_tokenizer, tmp_path):
    # 64 image codes + question + answer in a 96-token context: answers are cut to the room
    # left instead of refusing the question (a bug the digits run hit).
    tr = new_trainer(tiny(tiny_tokenizer, "model.max_seq_len=96"), tmp_path / "short",
                     progress=False)
    pipe = Pipeline(tr.parts, model=tr.model.eval())
    out = pipe.answer([ShapesWorld("test").image(0)] * 2, ["What color is the circle?", "How many?"],
                      sampling=SamplingConfig(1.0), seed=0)
    assert len(out) == 2
    with pytest.raises(InputError, match="tokens long"):
        pipe.ask(ShapesWorld("test").image(0), "circle " * 40)


def test_a_trainer_does_not_train_tokenizers(tiny_tokenizer, tmp_path):
    """Tokenizers are a step of their own: a Trainer over a folder without them refuses and
    leaves the folder without them; after prepare_tokenizers it trains."""
    from unimm.train.tokenizer import prepare_tokenizers
    from unimm.train.trainer import Trainer
    cfg = tiny(tiny_tokenizer, "train.max_steps=1")
    with pytest.raises(RunError, match="no tokenizers"):
        Trainer(cfg, tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "tokenizer").exists()
    prepare_tokenizers(cfg, tmp_path / "r")
    assert Trainer(cfg, tmp_path / "r", progress=False).fit()["step"] == 1


def test_warm_start_loads_weights_and_tokenizers(tiny_run, tmp_path):
    import torch
    src, _ = tiny_run
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"train.init_from={src}", "model.image_pos=learned", "train.max_steps=2"])
    tr = new_trainer(cfg, tmp_path / "warm", progress=False)
    ref = Pipeline.load(src).parts.model.state_dict()
    own = tr.model.state_dict()
    assert set(own) - set(ref) == {"image_pos.weight"}
    assert all(torch.equal(own[k], ref[k]) for k in ref)
    assert (tmp_path / "warm" / "tokenizer" / "text" / "text_tokenizer.json").is_file()
    bad = load_config(RunConfig, "configs/tiny.toml", [f"train.init_from={src}", "model.dim=64"])
    with pytest.raises(RunError, match="model shape"):
        new_trainer(bad, tmp_path / "bad", progress=False)


@pytest.mark.slow
def test_bench_paradigms_smoke(tiny_tokenizer, tmp_path):
    """`unimm bench paradigms` end to end on the tiny config (seconds): table, JSON, PNG."""
    r = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--minutes", "0.05",
                        "--config", "configs/tiny.toml", "--paradigms", "ar,masked",
                        "--tokenizer", str(tiny_tokenizer), "--quick", "--repeats", "1",
                        "-o", str(tmp_path / "bp")], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "bp" / "paradigms.json").read_text())
    assert [row["paradigm"] for row in res["rows"]] == ["ar", "masked"]
    fe = {row["paradigm"]: row["fe_per_image"] for row in res["rows"]}
    assert fe["masked"] < fe["ar"]
    assert "| masked |" in (tmp_path / "bp" / "paradigms.md").read_text()
    assert (tmp_path / "bp" / "paradigms.png").stat().st_size > 1000
    # warm-started from the finished ar run, two at a time, paradigm options from --set
    r = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--minutes", "0.05",
                        "--config", "configs/tiny.toml", "--paradigms", "masked,flow",
                        "--init", str(tmp_path / "bp" / "ar"), "--jobs", "2", "--quick",
                        "--repeats", "1", "--with-start", "--set", "masked.shift=true",
                        "--set", "flow.predict=codes", "-o", str(tmp_path / "warm")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "warm" / "paradigms.json").read_text())
    assert res["init"] == str(tmp_path / "bp" / "ar") and res["jobs"] == 2
    rows = {row["paradigm"]: row for row in res["rows"]}
    assert rows["masked"]["settings"]["shift"] is True
    assert rows["flow"]["settings"]["predict"] == "codes"
    # the start row: the init run itself, evaluated with the same eval, trained 0 steps here
    assert list(rows) == ["masked", "flow", "start (ar)"] and rows["start (ar)"]["steps"] == 0
    assert rows["start (ar)"]["vqa"] is not None and (tmp_path / "warm/start/eval.json").is_file()
    for name in ("masked", "flow"):
        cfg = json.loads((tmp_path / "warm" / name / "config.json").read_text())["config"]
        assert cfg["train"]["init_from"] == str(tmp_path / "bp" / "ar")
        assert (tmp_path / "warm" / name / "train.log").is_file()
    md = (tmp_path / "warm" / "paradigms.md").read_text()
    assert "warm-started from" in md and "shift = True" in md
    # --retime: sampling timed again for the same runs; the first timings are kept
    r = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--retime",
                        "--repeats", "1", "-o", str(tmp_path / "warm")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    again = json.loads((tmp_path / "warm" / "paradigms.json").read_text())
    assert again["retimed"]["repeats"] == 1 and len(again["rows"]) == 3
    for old, new in zip(res["rows"], again["rows"]):
        assert new["sampling_first_timing"]["s_per_image_b1"] == old["s_per_image_b1"]
        assert new["vqa"] == old["vqa"] and new["s_per_image_b16"] > 0
    assert again["rows"][2]["run"] == str(tmp_path / "bp" / "ar")
    assert "re-timed" in (tmp_path / "warm" / "paradigms.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--retime",
                          "-o", str(tmp_path / "none")], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "needs an earlier" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--minutes is required" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--minutes", "1",
                          "--paradigms", "ar,nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "available" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "unimm", "bench", "paradigms", "--minutes", "1",
                          "--with-start"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--init" in bad.stderr


def test_several_questions_per_picture_train(tiny_tokenizer, tmp_path):
    """data.vqa_turns: VQA rows carry follow-up branches, the step's loss is finite, and the
    option is checked."""
    import math
    cfg = tiny(tiny_tokenizer, "data.vqa_turns=4", "data.caption=0", "data.t2i=0",
               "data.edit=0")
    tr = new_trainer(cfg, tmp_path / "mt", progress=False)
    batch = tr.stream.batch(0)
    assert batch.branch is not None and int(batch.branch.max()) == 4
    assert math.isfinite(tr.train_step()["loss"])
    for bad in ("data.vqa_turns=0", "data.dataset=digits"):
        with pytest.raises(ValueError, match="vqa_turns"):
            tiny(tiny_tokenizer, "data.vqa_turns=2", bad)


def test_several_edits_per_picture_train(tiny_tokenizer, tmp_path):
    """data.edit_turns: edit rows carry branches whose target codes are the follow-up edits'
    pictures, and a step trains."""
    import math
    cfg = tiny(tiny_tokenizer, "data.edit_turns=3", "data.caption=0", "data.t2i=0",
               "data.vqa=0")
    tr = new_trainer(cfg, tmp_path / "me", progress=False)
    batch = tr.stream.batch(0)
    assert batch.branch is not None and int(batch.branch.max()) == 3
    v = tr.parts.paradigm.vocab
    # every row learns one image per edit: first edit plus its follow-ups
    n_img = (batch.loss & (batch.tokens >= v.code_start)).sum(1)
    n_edits = batch.branch.amax(1).clamp(min=1)
    assert (n_img == n_edits * v.n_image).all()
    assert math.isfinite(tr.train_step()["loss"])


def test_data_offset_reads_later_examples():
    from unimm.runs import TrainConfig
    from unimm.train.data import TaskStream

    class Rec:                     # records which examples a stream asks for
        def __init__(self):
            self.asked = []

        def example(self, i, task):
            self.asked.append((i, task))
            return i

    class Id:
        def turns(self, xs):
            return xs

    class Par:
        def make_batch(self, turns, rng):
            return turns

    a, b = Rec(), Rec()
    TaskStream(a, Id(), Par(), {"t2i": 1.0, "edit": 1.0}, 4, 0).batch(3)
    TaskStream(b, Id(), Par(), {"t2i": 1.0, "edit": 1.0}, 4, 0, offset=1000).batch(3)
    assert [i for i, _ in a.asked] == [12, 13, 14, 15]
    assert [i for i, _ in b.asked] == [1012, 1013, 1014, 1015]
    assert [t for _, t in a.asked] == [t for _, t in b.asked]   # the task draw is unchanged
    with pytest.raises(ValueError, match="data_offset"):
        TrainConfig(data_offset=-1)


@pytest.mark.slow
def test_bench_decoding_measures_every_setting(tiny_run, tmp_path):
    from unimm.bench.decoding import SETTINGS
    d, _ = tiny_run
    out = tmp_path / "dec.json"
    r = subprocess.run([sys.executable, "-m", "unimm", "bench", "decoding", "--run", str(d),
                        "--n-t2i", "2", "--n-edit", "2", "--n-geneval", "1", "-o", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert len(res["rows"]) == len(SETTINGS) and res["n_geneval"] == 6
    for row in res["rows"]:
        for k in ("t2i_full_scene", "geneval_overall", "edit_success"):
            assert 0.0 <= row[k] <= 1.0


@pytest.mark.parametrize("paradigm", ["ar", "masked", "flow", "mmada"])
def test_sampling_precision_bf16_runs_the_network_under_autocast(tiny_tokenizer, tmp_path,
                                                                 paradigm):
    """eval.precision = bf16: Pipeline.answer / draw run the backbone under bf16 autocast
    (fp32 runs do not) and still give valid answers and images."""
    import dataclasses
    from unimm.pipeline import Pipeline
    from unimm.runs import load_run
    cfg = tiny(tiny_tokenizer, f"paradigm={paradigm}", "train.max_steps=2")
    new_trainer(cfg, tmp_path / paradigm, progress=False).fit()
    seen = {}
    for precision in ("fp32", "bf16"):
        parts = load_run(tmp_path / paradigm, torch.device("cpu"))
        parts.cfg = dataclasses.replace(parts.cfg, eval=dataclasses.replace(
            parts.cfg.eval, precision=precision))
        pipe = Pipeline(parts)
        flags = []
        hook = pipe.model.backbone.register_forward_pre_hook(
            lambda *a: flags.append(torch.is_autocast_enabled("cpu")))
        img = ShapesWorld("val", cfg.data.world).vqa_example(0).image
        ans = pipe.answer([img], ["How many shapes are there?"], max_new=4)
        out = pipe.draw(["a red circle"], seed=0)
        hook.remove()
        assert isinstance(ans[0], str) and out[0].shape == (*img.shape[:2], 3)
        seen[precision] = set(flags)
    assert seen == {"fp32": {False}, "bf16": {True}}
    with pytest.raises(ValueError, match="precision"):
        tiny(tiny_tokenizer, "eval.precision=fp16")


def test_time_horizon_decays_on_the_budget_fraction(tiny_tokenizer, tmp_path):
    """train.horizon = "time": after warm-up the cosine follows elapsed / budget (the LR is at
    its floor when the budget is spent, however many steps that took); warm-up stays in steps."""
    from unimm.train.schedule import lr_at as schedule_lr

    def lr_at(step, tc, horizon, time_frac=None):
        return schedule_lr(step, tc.lr, tc.warmup_steps, horizon, tc.min_lr_ratio, time_frac)
    cfg = tiny(tiny_tokenizer, "train.horizon=time", "train.warmup_steps=2", "train.lr=1e-3",
               "train.min_lr_ratio=0.1")
    tc = cfg.train
    assert lr_at(0, tc, 100, 0.9) == pytest.approx(5e-4)             # warm-up: steps
    assert lr_at(5, tc, 100, 0.0) == pytest.approx(1e-3)
    assert lr_at(5, tc, 100, 0.5) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert lr_at(5, tc, 100, 1.0) == lr_at(5, tc, 100, 3.0) == pytest.approx(1e-4)
    tr = new_trainer(cfg, tmp_path / "r", progress=False)
    tr.budget_s, tr.step = 100.0, 4
    for elapsed in (25.0, 75.0):
        tr.elapsed = elapsed
        assert tr.train_step()["lr"] == pytest.approx(lr_at(4, tc, tc.max_steps, elapsed / 100))
        tr.step = 4
    tr.budget_s = 0.0                                 # no budget: the step horizon again
    tr.step = 4
    assert tr.train_step()["lr"] == pytest.approx(lr_at(4, tc, tc.max_steps))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.slow
def test_compiled_training_steps_match_eager_and_save_the_plain_model(tiny_tokenizer, tmp_path,
                                                                      precision):
    """train.compile: the same losses as eager (to float tolerance), and what is saved and
    sampled is the plain backbone (no `_orig_mod.` keys). In bf16 the attention runs
    `blocked_attention` eagerly between the compiled graphs."""
    p = f"train.precision={precision}"
    eager = new_trainer(tiny(tiny_tokenizer, p), tmp_path / "e", progress=False)
    comp = new_trainer(tiny(tiny_tokenizer, "train.compile=true", p), tmp_path / "c", progress=False)
    for _ in range(3):
        a, b = eager.train_step()["loss"], comp.train_step()["loss"]
        assert b == pytest.approx(a, rel=2e-2)
    assert comp._compiled is not None                 # it did compile (no eager fallback)
    assert type(comp.model.backbone).__name__ == "Backbone"
    comp.checkpoint()
    from safetensors import safe_open
    with safe_open(str(tmp_path / "c" / "model.safetensors"), "pt") as f:
        assert not any("_orig_mod" in k for k in f.keys())

"""Config composition: the paradigm as a tagged union, the model's options in [model], and
run folders of earlier versions loading to the same model."""

import json
import shutil
import warnings
from pathlib import Path

import pytest

from unimm.data.splits import ShapesWorld
from unimm.model.config import ModelConfig
from unimm.paradigms import PARADIGMS, build_paradigm
from unimm.paradigms.ar import ARConfig
from unimm.paradigms.masked import MaskedConfig
from unimm.paradigms.sequence import Vocab
from unimm.pipeline import Pipeline, default_run_dir
from unimm.runs import RunConfig, RunError, load_config as load_run_config
from unimm.runs.folder import RUN_VERSION, migrate_config
from unimm.utils.config import ConfigError, ConfigWarning, from_dict, load_config, to_dict

from helpers import new_trainer


def test_the_paradigm_is_one_table():
    cfg = load_config(RunConfig, "configs/tiny.toml", ["paradigm=masked", "masked.steps=8"])
    assert isinstance(cfg.paradigm_config, MaskedConfig) and cfg.paradigm_config.steps == 8
    d = to_dict(cfg)
    assert d["masked"]["steps"] == 8 and not set(d) & (set(PARADIGMS) - {"masked"})
    assert from_dict(RunConfig, d) == cfg                          # saved form reloads exactly
    assert isinstance(RunConfig().paradigm_config, ARConfig)       # defaults of the selected one
    # another paradigm's table is checked (typos raise), then dropped
    warm = load_config(RunConfig, "configs/paradigms_warm.toml", ["paradigm=flow"])
    assert warm.paradigm_config.predict == "codes" and "masked" not in to_dict(warm)
    with pytest.raises(ConfigError, match="unknown config key masked.stepz"):
        load_config(RunConfig, "configs/tiny.toml", ["masked.stepz=3"])
    with pytest.raises(ConfigError, match="unknown config key paradigm_config"):
        load_config(RunConfig, "configs/tiny.toml", ["paradigm_config.steps=3"])
    with pytest.raises(ValueError, match="takes a MaskedConfig"):
        RunConfig(paradigm="masked", paradigm_config=ARConfig())


def test_a_paradigm_receives_its_own_config_only():
    v = Vocab(40, 16, (4, 4))
    assert build_paradigm("masked", v, MaskedConfig(steps=5)).cfg.steps == 5
    assert build_paradigm("masked", v).cfg == MaskedConfig()
    with pytest.raises(TypeError, match="takes a MaskedConfig"):
        build_paradigm("masked", v, RunConfig())


def test_model_options_live_in_the_model_table():
    cfg = load_config(RunConfig, "configs/tiny.toml", ["model.image_pos=learned",
                                                       "model.code_latents=true"])
    assert cfg.model.image_pos == "learned" and cfg.model.code_latents
    assert cfg.model.backbone.dim == cfg.model.dim == 32
    with pytest.warns(ConfigWarning, match="code_mlp has moved to model.code_mlp"):
        old = load_config(RunConfig, "configs/tiny.toml", ["code_mlp=8"])
    assert old.model.code_mlp == 8
    with pytest.raises(ConfigError, match="both given"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        load_config(RunConfig, "configs/tiny.toml", ["code_mlp=8", "model.code_mlp=4"])
    with pytest.raises(ValueError, match="pick one"):
        ModelConfig(code_mlp=8, code_latents=True)
    with pytest.raises(ValueError, match="flow"):
        load_config(RunConfig, "configs/tiny.toml", ["model.code_latents=true", "paradigm=flow"])


def _as_version_1(run: Path) -> None:
    """Rewrite a run's config.json the way version 1 saved it: every paradigm's table, the
    token model's options at the top."""
    p = run / "config.json"
    d = json.loads(p.read_text())
    c = d["config"]
    for name, (_, config) in PARADIGMS.items():
        c.setdefault(name, to_dict(config()))
    for key in ("code_init", "image_pos", "code_mlp", "code_latents"):
        c[key] = c["model"].pop(key)
    d["version"] = 1
    p.write_text(json.dumps(d))


def test_runs_of_earlier_versions_load_to_the_same_model(tiny_tokenizer, tmp_path):
    # the shipped model was saved as version 1
    shipped = json.loads((default_run_dir() / "config.json").read_text())
    assert shipped["version"] == 1 and "masked" in shipped["config"]
    cfg = load_run_config(default_run_dir())
    assert cfg.model.image_pos == "learned" and cfg.paradigm_config.loss_reduction == "sequence"
    # a run saved now, rewritten as version 1: the same config, the same outputs
    run = tmp_path / "run"
    tiny = load_config(RunConfig, "configs/tiny.toml", [
        f"image_tokenizer_path={tiny_tokenizer}", "paradigm=masked", "masked.steps=3",
        "model.image_pos=learned", "train.max_steps=2"])
    new_trainer(tiny, run, progress=False).fit()
    assert json.loads((run / "config.json").read_text())["version"] == RUN_VERSION
    old = tmp_path / "old"
    shutil.copytree(run, old)
    _as_version_1(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigWarning)              # a saved run loads quietly
        assert load_run_config(old) == load_run_config(run) == tiny
    img = ShapesWorld("test").image(0)
    a, b = Pipeline.load(run), Pipeline.load(old)
    assert a.ask(img, "How many shapes are there?") == b.ask(img, "How many shapes are there?")
    assert (a.generate("a red circle")[0] == b.generate("a red circle")[0]).all()
    # migration only moves what version 1 kept elsewhere
    v1 = json.loads((old / "config.json").read_text())["config"]
    assert migrate_config(v1, 1) == json.loads((run / "config.json").read_text())["config"]
    d = json.loads((run / "config.json").read_text())
    d["version"] = RUN_VERSION + 1
    (old / "config.json").write_text(json.dumps(d))
    with pytest.raises(RunError, match="newer unimm"):
        load_run_config(old)

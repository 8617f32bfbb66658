"""The world contract (data/world.py): every dataset behind one interface, listed in WORLDS,
and nothing outside data/ branching on a dataset's name."""

import ast
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unimm.data.manifest import export_split
from unimm.data.splits import WorldConfig
from unimm.data.world import World
from unimm.data.worlds import WORLDS, DataConfig, make_world
from unimm.runs import RunConfig
from unimm.utils.config import load_config

SRC = Path(__file__).resolve().parents[1] / "src" / "unimm"


@pytest.mark.slow
def test_no_module_outside_data_branches_on_a_dataset_name():
    names = set(WORLDS)
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "data":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            for side in [node.left, *node.comparators]:
                consts = side.elts if isinstance(side, (ast.Tuple, ast.List, ast.Set)) else [side]
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not bad, f"dataset names compared outside data/: {bad}"


def test_every_world_is_listed_and_complete():
    assert list(WORLDS) == ["shapes", "digits", "manifest"]
    for name, cls in WORLDS.items():
        assert issubclass(cls, World) and cls.name == name
        for method in ("source", "images", "pairs", "eval_suites", "preview", "demo"):
            assert getattr(cls, method) is not getattr(World, method), (name, method)
    with pytest.raises(ValueError, match="known: shapes, digits, manifest"):
        DataConfig(dataset="mnist")


def test_what_the_worlds_supply():
    shapes = make_world(DataConfig())
    digits = make_world(DataConfig(dataset="digits", edit=5.0))
    assert shapes.tasks == ("caption", "vqa", "t2i", "edit") and not shapes.accepts_gray
    assert digits.tasks == ("caption", "vqa", "t2i") and digits.accepts_gray
    assert "edit" not in digits.task_weights()            # digits have no editing
    assert shapes.task_weights() == {"caption": 1.0, "vqa": 2.0, "t2i": 2.0, "edit": 1.0}
    for w in (shapes, digits):
        e = w.source("val").example(3, "vqa")
        assert e.image.shape == (32, 32, 3) and e.target_text
        imgs = np.stack([w.images("test").image(i) for i in range(4)])
        assert w.read(imgs) == w.read(imgs.copy()) and len(w.read(imgs)) == 4
        img, text, key = w.pairs("train")(5)
        assert img.shape == (32, 32, 3) and isinstance(text, str)
        assert w.text_corpus(3)
    assert digits.split_size("val") == 179 and shapes.split_size("val") is None
    # options a world cannot honour are refused where the config is read
    with pytest.raises(ValueError, match="digits have no editing"):
        DataConfig(dataset="digits", edit_turns=2)
    with pytest.raises(ValueError, match="multiple of 8"):
        DataConfig(dataset="digits", world=WorldConfig(image_size=36))
    with pytest.raises(ValueError, match="image_size"):
        DataConfig(world=WorldConfig(image_size=16))              # ShapesWorld needs >= 32
    assert DataConfig(dataset="digits", world=WorldConfig(image_size=16)).world.image_size == 16
    unset = make_world(DataConfig(dataset="manifest"))   # loads (a released checkpoint reads
    with pytest.raises(ValueError, match="data.manifest"):  # no data), refuses to read a split
        unset.source("train")
    with pytest.raises(ValueError, match="dataset = 'manifest' only"):
        DataConfig(manifest="x.jsonl")


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest")
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        export_split(split, n, root / split)
    return root


def test_a_manifest_is_a_world(manifest_dir):
    w = make_world(DataConfig(dataset="manifest", vqa_turns=2,
                              manifest=str(manifest_dir / "{split}" / "manifest.jsonl")))
    assert w.tasks == ("caption", "vqa", "t2i", "edit")
    src = w.source("train")
    cap, vqa, t2i, ed = (src.example(1, t) for t in ("caption", "vqa", "t2i", "edit"))
    assert cap.target_text == t2i.text and np.array_equal(cap.image, t2i.target_image)
    assert vqa.text.endswith("?") and len(vqa.meta["followups"]) == 1
    assert ed.image.shape == ed.target_image.shape == (32, 32, 3)
    assert w.read(np.stack([cap.image])) is None                  # no judge of its own
    suites = w.eval_suites("test", RunConfig().eval, quick=False)
    assert [s.ask for s in suites] == ["answer", "answer", "draw"]   # vqa, caption, t2i (scenes)
    assert suites[0].score([e for e in suites[0].texts]) == {"vqa/exact": 0.0}
    bad = make_world(DataConfig(dataset="manifest", manifest=str(manifest_dir / "train" / "manifest.jsonl"),
                                world=WorldConfig(image_size=64)))
    with pytest.raises(ValueError, match="image_size is 64"):
        bad.source("train").example(0, "caption")


@pytest.mark.slow
def test_training_and_evaluation_read_the_world(tiny_tokenizer, manifest_dir, tmp_path):
    """A run on a manifest and a run on digits: the trainer streams their examples, the
    evaluator reports their metrics and the Pipeline reads what their world accepts."""
    from unimm.eval.evaluate import evaluate
    from unimm.pipeline import Pipeline
    from unimm.train.tokenizer import prepare_tokenizers
    from unimm.train.trainer import Trainer
    runs = {"manifest": [f"data.manifest={manifest_dir}/{{split}}/manifest.jsonl"],
            "digits": []}
    for name, extra in runs.items():
        cfg = load_config(RunConfig, "configs/tiny.toml", [
            f"image_tokenizer_path={tiny_tokenizer}", f"data.dataset={name}",
            "train.max_steps=2", "eval.n_vqa=4", "eval.n_caption=4", "eval.n_t2i=2",
            "eval.n_digits=4", *extra])
        prepare_tokenizers(cfg, tmp_path / name)
        tr = Trainer(cfg, tmp_path / name, progress=False)
        tr.fit()
        pipe = Pipeline(tr.parts, model=tr.model.eval())
        r = evaluate(pipe, "val", progress=False)
        if name == "manifest":
            assert set(r) == {"vqa/exact", "caption/exact", "t2i/full_scene", "speed/images_per_s"}
        else:
            assert {"digits/recognition", "digits/generation"} <= set(r)
        gray = Image.new("L", (32, 32))
        assert pipe.accepts_gray is (name == "digits")
        if pipe.accepts_gray:
            assert isinstance(pipe.caption(gray), str)

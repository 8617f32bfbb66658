import numpy as np
import pytest

from unimm.data import shapes as S
from unimm.data.splits import ShapesWorld, WorldConfig
from unimm.data.shapes_judge import JudgeError, judge, judge_batch
from unimm.data.perturb import PERTURBATIONS, perturb
from unimm.data.shapes_selftest import confusions, selftest


@pytest.mark.parametrize("size", [32, 64])
def test_judge_inverts_the_renderer(size):
    w = ShapesWorld("test", WorldConfig(image_size=size))
    scenes = [w.scene(i) for i in range(1500 if size == 32 else 400)]
    out = judge_batch(np.stack([S.render(s) for s in scenes]))
    assert all(a.key() == b.key() for a, b in zip(out, scenes))
    # positions too: the judge recovers the exact jitter on clean renders
    assert all(a == b for a, b in zip(out, scenes))


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_judge_is_robust_to_mild_perturbations(kind):
    w = ShapesWorld("test")
    rng = np.random.default_rng(0)
    scenes = [w.scene(i) for i in range(600)]
    out = judge_batch(np.stack([perturb(S.render(s), kind, rng) for s in scenes]))
    acc = np.mean([a.key() == b.key() for a, b in zip(out, scenes)])
    assert acc >= 0.98, (kind, acc)


def test_judge_sees_what_is_wrong():
    sc = S.Scene((S.Obj(0, "circle", "red", "large", 1, 1), S.Obj(8, "cross", "blue", "small", 23, 23)))
    img = S.render(sc)
    assert judge(img).key() == sc.key()
    bad = img.copy()
    bad[bad.sum(-1) > 0] = S.COLORS["green"]       # recolour everything
    assert [o.color for o in judge(bad).objects] == ["green", "green"]
    empty = np.zeros_like(img)
    assert judge(empty).objects == ()
    # a different shape in the same place is read as that shape
    other = S.render(sc.with_objects([S.Obj(0, "square", "red", "large", 1, 1)]))
    assert judge(other).objects[0].shape == "square"


def test_judge_accepts_paths_pil_and_float(tmp_path):
    from PIL import Image
    sc = S.scene_from_seed(5)
    img = S.render(sc)
    p = tmp_path / "x.png"
    Image.fromarray(img).save(p)
    for x in (p, str(p), Image.fromarray(img), img.astype(np.float32) / 255):
        assert judge(x).key() == sc.key()


def test_judge_rejects_wrong_sizes():
    with pytest.raises(JudgeError, match="square RGB"):
        judge(np.zeros((32, 40, 3), np.uint8))
    with pytest.raises(JudgeError, match="32"):
        judge(np.zeros((16, 16, 3), np.uint8))


def test_selftest_reports_the_bar_keys_and_confusions():
    r = selftest(200, seed=3, stress=False)
    assert r["clean_exact"] >= 0.995 and r["perturbed_exact"] >= 0.98
    assert set(r["confusions_clean"]) == {"shape", "color", "size", "missed", "spurious"}
    assert r["ms_per_image_single"] < 50


def test_confusions_count_mistakes():
    a = S.Scene((S.Obj(0, "circle", "red", "large", 1, 1),))
    b = S.Scene((S.Obj(0, "square", "red", "small", 1, 1), S.Obj(4, "cross", "blue", "small", 12, 12)))
    c = confusions([a], [b])
    assert c["shape"] == {"circle->square": 1} and c["size"] == {"large->small": 1}
    assert c["spurious"] == 1 and c["missed"] == 0

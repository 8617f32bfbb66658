import pytest

from unimm.data.shapes import Obj, Scene
from unimm.data.text import caption
from unimm.data import shapes_metrics as M
from unimm.data.geneval import GenevalPrompt, Want

A = Scene((Obj(0, "circle", "red", "large", 1, 1), Obj(5, "square", "blue", "small", 23, 12)))
B = Scene((Obj(0, "circle", "red", "large", 2, 2),))


def test_full_scene_and_recall():
    assert M.full_scene_exact([A, B], [A, B]) == 1.0
    assert M.full_scene_exact([A, B], [B, B]) == 0.5
    assert M.object_recall([A], [B]) == 0.5
    with pytest.raises(ValueError, match="length"):
        M.full_scene_exact([A], [A, B])


def test_geneval_categories():
    ps = [GenevalPrompt("single_object", "a circle", (Want("circle"),)),
          GenevalPrompt("counting", "two circles", (Want("circle"),), count=2),
          GenevalPrompt("position", "a circle left of a square", (Want("circle"), Want("square")),
                        relation="left of"),
          GenevalPrompt("color_attr", "a blue circle and a red square",
                        (Want("circle", "blue"), Want("square", "red")))]
    r = M.geneval_scores(ps, [A, A, A, A])
    assert r["single_object"] == 1 and r["counting"] == 0 and r["position"] == 1
    assert r["color_attr"] == 0 and r["overall"] == 0.5


def test_vqa_and_caption_and_edit():
    r = M.vqa_accuracy(["count", "color"], ["two", "red"], ["2", "blue"])
    assert r["overall"] == 0.5 and r["kind/count"] == 1 and r["kind/color"] == 0
    caps = [caption(A), "a red circle"]
    r = M.caption_scores([A, A], caps, [[caption(A)], [caption(A)]])
    assert r["scene_correct"] == 0.5 and r["exact"] == 0.5
    r = M.edit_scores([A], [B], [B])
    assert r == {"success": 1.0, "kept": 1.0}
    r = M.edit_scores([A], [B], [Scene(())])
    assert r == {"success": 0.0, "kept": 0.0}

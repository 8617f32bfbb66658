"""The model that ships with the package: it loads offline and actually sees and draws.

These are quality floors well below the model card's numbers (VQA 0.72, text-to-image 0.60 on
the test split), so they catch a broken or mismatched shipped model, not noise. A random or
mis-loaded model scores ~0 on drawing and far lower on answering."""

import numpy as np
import pytest

from unimm.data.splits import ShapesWorld
from unimm.data.text import normalize_answer
from unimm.data.shapes_judge import judge_batch
from unimm.pipeline import Pipeline, default_run_dir

pytestmark = pytest.mark.skipif(not (default_run_dir() / "config.json").is_file(),
                                reason="no default model installed")


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load(device="cpu")


def test_default_model_is_small_and_self_contained():
    d = default_run_dir()
    size = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, size
    assert (d / "MODEL_CARD.md").is_file()


def _answers_and_draws(pipe, n_vqa: int, n_t2i: int) -> None:
    """VQA accuracy >= 0.55 over n_vqa test questions, full-scene text-to-image >= 0.35."""
    w = ShapesWorld("test")
    exs = [w.vqa_example(i) for i in range(n_vqa)]
    preds = pipe.answer([e.image for e in exs], [e.text for e in exs])
    acc = np.mean([normalize_answer(p) == normalize_answer(e.target_text) for p, e in zip(preds, exs)])
    assert acc >= 0.55, acc
    t2i = [w.t2i_example(i, geneval=False) for i in range(n_t2i)]
    judged = judge_batch(np.stack(pipe.draw([e.text for e in t2i])))
    full = np.mean([e.target_scene.key() == j.key() for e, j in zip(t2i, judged)])
    assert full >= 0.35, full


@pytest.mark.slow
def test_default_model_answers_and_draws(pipe):
    _answers_and_draws(pipe, 60, 48)


@pytest.mark.slow
def test_default_model_in_bf16_answers_and_draws():
    """precision="bf16" (autocast, bf16 KV caches): the same floors on fewer items."""
    half = Pipeline.load(device="cpu", precision="bf16")
    assert half.precision == "bf16"
    _answers_and_draws(half, 30, 16)


def test_reasoning_replies_are_cut_to_the_answer(pipe, monkeypatch):
    """Runs trained with data.vqa_reasoning reply "<scene description> Answer: <answer>";
    ask returns the answer, or the whole reply with reasoning=True. Replies without the mark
    (captions, runs without reasoning) come back whole."""
    reply = "A small red circle in the center. Answer: yes"
    tok = pipe.parts.text_tok
    monkeypatch.setattr(pipe.paradigm, "generate_text",
                        lambda model, turns, *a, **k: [tok.encode(reply) for _ in turns])
    img = ShapesWorld("test").image(0)
    assert pipe.ask(img, "Is there a circle?") == "yes"
    assert pipe.ask(img, "Is there a circle?", reasoning=True) == reply
    reply = "A small red circle in the center."
    assert pipe.caption(img) == reply

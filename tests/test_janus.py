"""transformers' Janus as a reference: our Janus-compatible layout converts both ways, and with
the same weights transformers' JanusForConditionalGeneration produces the same greedy image codes
(batched, left-padded, with guidance) and the same greedy answers as our decoders."""

import dataclasses
import random
import types

import numpy as np
import pytest
import torch

from unimm.model.backbone import BackboneConfig
from unimm.model.config import ModelConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.ar import ARConfig, Autoregressive, pad_condition
from unimm.paradigms.base import Turn, format_turn
from unimm.paradigms.sampling import GREEDY
from unimm.paradigms.sequence import Vocab
from unimm.runs import RunConfig
from helpers import new_trainer

pytest.importorskip("transformers")
from unimm.interop.janus import (ConversionError, build_janus, from_janus,  # noqa: E402
                                 from_janus_state, janus_answer, janus_generate_codes,
                                 janus_problems, to_janus, to_janus_state)

V = Vocab(n_text=40, n_codes=16, grid=(4, 4))
BB = BackboneConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                    rope_sections=(4, 0, 0))
CFG = RunConfig(model=ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=128,
                                  rope_sections=(4, 0, 0), code_mlp=8),
                paradigm_config=ARConfig(uncond="pad"))
COMPAT = ["model.code_mlp=8", "ar.uncond=pad", "model.rope_sections=[4,0,0]"]


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    m = TokenModel(V.size, BB, code_start=V.code_start, code_mlp=8)
    with torch.no_grad():           # larger weights: logits that depend on the context
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    m.eval()
    parts = types.SimpleNamespace(cfg=CFG, vocab=V, model=m,
                                  image_tok=types.SimpleNamespace(image_size=16))
    return m, build_janus(parts)


def prompts(n, seed=0):
    r = random.Random(seed)
    return [Turn("t2i", [r.randrange(V.n_text) for _ in range(r.randint(1, 7))]) for _ in range(n)]


def questions(n, seed=0):
    r = random.Random(seed)
    return [Turn("vqa", [r.randrange(V.n_text) for _ in range(r.randint(1, 7))],
                 [r.randrange(V.n_codes) for _ in range(V.n_image)]) for _ in range(n)]


@pytest.mark.slow
def test_state_round_trip_is_exact(pair):
    m, _ = pair
    sd = m.state_dict()
    back = from_janus_state(to_janus_state(sd, CFG, V), CFG)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("n,guidance", [(1, 1.5), (4, 3.0)])
def test_janus_draws_the_same_greedy_codes(pair, n, guidance):
    m, janus = pair
    ts = prompts(n)                                        # different lengths: left padding
    ours = Autoregressive(V, ARConfig(uncond="pad")).generate_images(m, ts, guidance, GREEDY)
    theirs = janus_generate_codes(janus, V, ts, guidance)
    assert torch.equal(ours, theirs)
    # and guidance matters here, so the equality is not vacuous
    plain = Autoregressive(V, ARConfig(uncond="pad")).generate_images(m, ts, 1.0, GREEDY)
    assert not torch.equal(ours, plain)


@pytest.mark.parametrize("n", [1, 4])
def test_janus_gives_the_same_greedy_answers(pair, n):
    m, janus = pair
    qs = questions(n)
    ours = Autoregressive(V, ARConfig(uncond="pad")).generate_text(m, qs, 10, GREEDY)
    assert ours == janus_answer(janus, V, qs, 10)
    assert len({tuple(a) for a in ours}) >= min(n, 2)    # rows really differ


def test_janus_guidance_must_exceed_one(pair):
    with pytest.raises(ConversionError, match="above 1"):
        janus_generate_codes(pair[1], V, prompts(1), 1.0)


def test_pad_condition_is_janus_unconditional_row():
    t = Turn("t2i", [5, 6, 7])
    row = pad_condition(V, format_turn(V, t, with_target=False))
    assert row.tokens == [V.bos] + [V.pad] * 5 + [V.boi]
    e = Turn("edit", [5, 6], list(range(V.n_image)))
    row = pad_condition(V, format_turn(V, e, with_target=False))
    assert row.tokens[:V.n_image + 3] == format_turn(V, e, with_target=False).tokens[:V.n_image + 3]
    assert row.tokens[V.n_image + 3:] == [V.pad] * 4 + [V.boi]
    # training rows dropped for guidance keep their targets and length
    tr = Turn("t2i", [5, 6, 7], target_image=list(range(V.n_image)))
    full = format_turn(V, tr)
    ar = Autoregressive(V, ARConfig(uncond="pad", cfg_dropout=0.99))
    dropped = ar.format(tr, random.Random(0))
    assert len(dropped) == len(full) and dropped.loss == full.loss
    assert dropped.tokens[-V.n_image - 3:] == full.tokens[-V.n_image - 3:]


def test_code_mlp_logits_and_embeddings_are_consistent(pair):
    m, _ = pair
    h = torch.randn(3, 32)
    full = m.logits(h)
    assert full.shape == (3, V.size)
    assert torch.allclose(full[:, :V.code_start], m.logits(h, 0, V.code_start))
    assert torch.allclose(full[:, V.code_start + 2:V.code_start + 9],
                          m.logits(h, V.code_start + 2, V.code_start + 9))
    assert torch.allclose(full[:, 3:V.code_start + 4], m.logits(h, 3, V.code_start + 4))
    tok = torch.tensor([[1, V.code_start + 3, 2]])
    x = m.embed_tokens(tok, torch.zeros(1, 3, 3, dtype=torch.long))
    assert torch.allclose(x[0, 1], m.codes.embed_codes(torch.tensor(3)))
    assert torch.equal(x[0, 0], m.embed.weight[1])


def test_incompatible_runs_are_refused_with_reasons():
    problems = janus_problems(RunConfig())
    assert any("rope_sections" in p for p in problems) and any("code_mlp" in p for p in problems)
    assert any("uncond" in p for p in problems)
    assert janus_problems(CFG) == []
    bidir = dataclasses.replace(CFG, paradigm_config=dataclasses.replace(
        CFG.paradigm_config, input_images="bidirectional"))
    assert [p for p in janus_problems(bidir) if "input_images" in p]


@pytest.mark.slow
def test_saved_run_converts_both_ways(tiny_tokenizer, tmp_path):
    from unimm.data.splits import ShapesWorld
    from unimm.pipeline import Pipeline
    from unimm.utils.config import load_config
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tiny_tokenizer}", *COMPAT, "train.max_steps=4"])
    new_trainer(cfg, tmp_path / "run", progress=False).fit()
    out = to_janus(tmp_path / "run", tmp_path / "janus")
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert not list(tmp_path.glob("*.partial"))
    back = from_janus(out, tmp_path / "back")
    a, b = Pipeline.load(tmp_path / "run"), Pipeline.load(back)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    img = ShapesWorld("test").image(0)
    assert a.ask(img, "How many shapes are there?") == b.ask(img, "How many shapes are there?")
    assert np.array_equal(a.generate("a red circle", guidance=2.0)[0],
                          b.generate("a red circle", guidance=2.0)[0])
    # refusals: an existing target, a folder without our side files, an incompatible run
    with pytest.raises(ConversionError, match="exists"):
        to_janus(tmp_path / "run", out)
    (tmp_path / "bare").mkdir()
    with pytest.raises(ConversionError, match="unimm/config.json"):
        from_janus(tmp_path / "bare", tmp_path / "x")
    plain = load_config(RunConfig, "configs/tiny.toml",
                        [f"image_tokenizer_path={tiny_tokenizer}", "train.max_steps=1"])
    new_trainer(plain, tmp_path / "plain", progress=False).fit()
    with pytest.raises(ConversionError, match="not Janus-compatible"):
        to_janus(tmp_path / "plain", tmp_path / "j2")
    assert not (tmp_path / "j2").exists()

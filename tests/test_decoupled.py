"""Decoupled encoders (Janus): the ViT, its contrastive pre-training, the paradigm (input images
read through the encoder, targets as codes), and a tiny end-to-end run. Tiny dims, seconds."""

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import greedy_text_by_recompute

from unimm.data.splits import ShapesWorld
from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.model.vit import EncoderFileError, ViT, ViTConfig, read_encoder
from unimm.paradigms.ar import ARConfig
from unimm.paradigms.base import Turn, drop_condition
from unimm.paradigms.decoupled import Decoupled, DecoupledConfig
from unimm.paradigms.sampling import GREEDY
from unimm.paradigms.sequence import Vocab
from unimm.train.contrastive import ContrastiveConfig, TextTowerConfig, train_encoder
from unimm.runs import RunConfig
from unimm.utils.config import load_config
from helpers import new_trainer

V = Vocab(n_text=40, n_codes=16, grid=(2, 2))          # 8x8 images, 4x4 patches
VIT = ViTConfig(image_size=8, patch_size=4, dim=16, n_layers=1, n_heads=2, embed_dim=16)


def paradigm(**kw):
    return Decoupled(V, DecoupledConfig(ar=ARConfig(cfg_dropout=0.0), encoder=VIT, **kw))


def model(seed=0, dim=32, layers=2):
    torch.manual_seed(seed)
    m = TokenModel(V.size, BackboneConfig(dim=dim, n_layers=layers, n_heads=4, max_seq_len=128))
    p = paradigm()
    p.attach(m, None)
    with torch.no_grad():       # larger weights so logits depend on the context at this size
        for q in m.parameters():
            if q.dim() >= 2:
                q.mul_(4)
    return m.eval(), p


def pixels(seed):
    return np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)


def codes(seed):
    r = random.Random(seed)
    return [r.randrange(V.n_codes) for _ in range(V.n_image)]


def logits_of(m, p, turns):
    batch = p.make_batch(turns, random.Random(0))
    with torch.no_grad():
        h = p.hidden(m, batch.tokens, batch.pos, None, batch.extra)
    return m.logits(h), batch


# ---------------------------------------------------------------------------------------------
# the encoder

def test_vit_shapes_and_bidirectional_attention():
    vit = ViT(ViTConfig(image_size=32, patch_size=4, dim=16, n_layers=1, n_heads=2,
                        embed_dim=8)).eval()
    imgs = torch.from_numpy(np.stack([ShapesWorld("train").image(i) for i in range(2)]))
    f = vit(imgs)
    assert f.shape == (2, 64, 16) and vit.pool(f).shape == (2, 8)
    assert torch.allclose(vit(imgs.float() / 255), f, atol=1e-5)       # uint8 == float [0, 1]
    changed = imgs.clone()
    changed[:, -4:, -4:] = 255 - changed[:, -4:, -4:]                   # the last patch only
    assert not torch.allclose(vit(changed)[:, 0], f[:, 0], atol=1e-4)   # patch 0 sees it
    with pytest.raises(ValueError, match="32, 32, 3"):
        vit(torch.zeros(1, 16, 16, 3, dtype=torch.uint8))


def tiny_encoder_cfg(**kw):
    base = dict(vit=ViTConfig(dim=32, n_layers=1, n_heads=2, embed_dim=32),
                text=TextTowerConfig(dim=32, n_layers=1, n_heads=2, corpus=300),
                steps=200, batch_size=32, lr=3e-3, warmup_steps=10, val_scenes=32,
                eval_every=10 ** 6, threads=1)
    base.update(kw)
    return ContrastiveConfig(**base)


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "encoder"
    m = train_encoder(tiny_encoder_cfg(), out, progress=False)
    return out, m


@pytest.mark.slow
def test_contrastive_encoder_retrieves_its_captions(tiny_encoder):
    # measured (200 steps, seeds 0-2, 1 thread, ~6 s): top-1 0.47-0.59 both ways among 32 val
    # scenes (chance 1/32 = 0.031), top-5 0.94-1.0
    out, m = tiny_encoder
    v = m["val"]
    assert v["chance_top1"] == pytest.approx(1 / 32)
    assert v["image_to_text_top1"] > 0.25 and v["text_to_image_top1"] > 0.25, v
    assert v["image_to_text_top5"] > 0.7 and v["text_to_image_top5"] > 0.7, v
    meta = json.loads((out / "encoder.json").read_text())
    assert meta["format"] == "unimm.encoder"
    cfg, state = read_encoder(out, want=tiny_encoder_cfg().vit)
    assert set(state) == set(ViT(cfg).state_dict())
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())   # no temp leftovers
    with pytest.raises(FileExistsError, match="not an empty folder"):
        train_encoder(tiny_encoder_cfg(steps=1), out, progress=False)


def test_untrained_encoder_is_at_chance(tmp_path):
    # the retrieval numbers above mean something: one step leaves it near chance
    m = train_encoder(tiny_encoder_cfg(steps=1), tmp_path / "e", progress=False)
    assert m["val"]["image_to_text_top1"] < 0.2


# ---------------------------------------------------------------------------------------------
# the paradigm

def test_input_span_is_read_through_the_encoder():
    m, p = model(0)
    c = codes(1)
    a = Turn("vqa", [3, 4], c, [5, 6], None, pixels(1))
    b = Turn("vqa", [3, 4], c, [5, 6], None, pixels(2))       # same codes, other pixels
    la, batch = logits_of(m, p, [a])
    lb, _ = logits_of(m, p, [b])
    answer = batch.loss[0].nonzero().flatten() - 1            # positions predicting the answer
    assert not torch.allclose(la[0, answer], lb[0, answer], atol=1e-3)
    # ... and the codes of the input span no longer matter at all
    lc, _ = logits_of(m, p, [Turn("vqa", [3, 4], codes(2), [5, 6], None, pixels(1))])
    assert torch.allclose(la, lc, atol=1e-5)


def test_edit_target_span_keeps_code_embeddings():
    m, p = model(1)
    src, tgt = codes(3), codes(4)
    turns = [Turn("edit", [7], src, None, tgt, pixels(s)) for s in (1, 2)]
    batch = p.make_batch(turns, random.Random(0))
    with torch.no_grad():
        x = p.embed(m, batch.tokens, batch.pos, batch.extra)
        ref = m.embed_tokens(batch.tokens, batch.pos)
    span = batch.span
    assert torch.equal(x[span == 2], ref[span == 2])          # target: plain code embeddings
    assert not torch.allclose(x[0][span[0] == 1], x[1][span[1] == 1])    # source: pixels
    assert torch.equal(x[span == 0], ref[span == 0])          # text untouched


def test_cfg_twin_of_an_edit_keeps_its_source_pixels():
    t = Turn("edit", [1, 2], codes(0), None, codes(1), pixels(0))
    u = drop_condition(t)
    assert u.text == [] and u.pixels is t.pixels and u.image == t.image
    ex = paradigm().extras_for([t, u, Turn("t2i", [1], None, None, codes(2))])
    assert ex["has_image"].tolist() == [True, True, False]
    assert torch.equal(ex["pixels"][0], ex["pixels"][1])


def test_missing_pixels_give_a_clear_error():
    with pytest.raises(ValueError, match="Turn.pixels"):
        paradigm().extras_for([Turn("vqa", [1], codes(0), [2])])


@pytest.mark.slow
def test_losses_are_finite_and_fall_when_overfitting_one_batch():
    torch.manual_seed(0)
    m = TokenModel(V.size, BackboneConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    p = paradigm()
    p.attach(m, None)
    r = random.Random(0)
    ts = [Turn("vqa", [r.randrange(40)], codes(i), [r.randrange(40) for _ in range(3)], None,
               pixels(i)) for i in range(4)]
    ts += [Turn("edit", [r.randrange(40)], codes(10 + i), None, codes(20 + i), pixels(10 + i))
           for i in range(2)]
    ts += [Turn("t2i", [r.randrange(40) for _ in range(3)], None, None, codes(30 + i))
           for i in range(2)]
    batch = p.make_batch(ts, r)
    enc0 = m.extras["encoder"].patch.weight.detach().clone()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, stats = p.loss(m, batch)
        assert torch.isfinite(loss) and np.isfinite(stats["loss/text"])
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert first > 2.0 and loss.item() < 0.05, (first, loss.item())
    assert not torch.allclose(m.extras["encoder"].patch.weight, enc0)   # the loss reaches the ViT


@pytest.mark.slow
def test_alignment_loss_pulls_features_onto_the_code_embeddings_only():
    """decoupled.align_weight: relative MSE of aligned features against the (fixed) token
    embeddings of the input codes; it trains the encoder side and never the table."""
    m, p = model(0)
    pa = paradigm(align_weight=1.0)
    ts = [Turn("vqa", [1, 2], codes(i), [3], None, pixels(i)) for i in range(3)]
    ts.append(Turn("t2i", [4], None, None, codes(9)))
    batch = pa.make_batch(ts, random.Random(0))
    base, _ = p.loss(m, batch)
    loss, stats = pa.loss(m, batch)
    has = batch.extra["has_image"]
    with torch.no_grad():
        feats = pa.features(m, batch.extra["pixels"][has]).reshape(-1, 32)
        want = m.embed_tokens(batch.tokens, batch.pos)[pa.input_span(batch.tokens, has)]
    align = ((feats - want) ** 2).mean() / (want ** 2).mean()
    assert stats["loss/align"] == pytest.approx(align.item(), rel=1e-4)
    assert loss.item() == pytest.approx(base.item() + align.item(), rel=1e-4)
    m.zero_grad()
    (loss - base.detach()).backward()          # the gradient of both terms ...
    g_table = m.embed.weight.grad.clone()
    m.zero_grad()
    p.loss(m, batch)[0].backward()             # ... minus that of the task loss alone
    assert torch.allclose(g_table, m.embed.weight.grad, atol=1e-7)     # table: task loss only
    opt = torch.optim.Adam(list(m.extras.parameters()), lr=3e-3)
    for _ in range(100):
        loss, stats = pa.loss(m.train(), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stats["loss/align"] < 0.2 * align.item(), (stats["loss/align"], align.item())


def test_freeze_encoder_keeps_the_vit_fixed_but_trains_the_aligner():
    torch.manual_seed(0)
    m = TokenModel(V.size, BackboneConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=128))
    p = paradigm(freeze_encoder=True)
    p.attach(m, None)
    before = {k: v.clone() for k, v in m.extras.state_dict().items()}
    batch = p.make_batch([Turn("vqa", [1], codes(0), [2, 3], None, pixels(0))], random.Random(0))
    opt = torch.optim.AdamW([q for q in m.parameters() if q.requires_grad], lr=1e-2)
    p.loss(m, batch)[0].backward()
    opt.step()
    after = m.extras.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("aligner."))


def test_cached_text_decoding_equals_full_recompute():
    m, p = model(2)
    t = Turn("vqa", [3, 4, 5], codes(5), None, None, pixels(5))
    other = Turn("vqa", [7], codes(6), None, None, pixels(6))
    fast = p.generate_text(m, [t, other], 8, GREEDY)[0]
    ref = greedy_text_by_recompute(p, m, t, extra=p.extras_for([t]))
    assert fast == ref and len(ref) > 0


def test_batched_cfg_equals_separate_passes():
    m, p = model(3)
    ts = [Turn("edit", [1, 2], codes(7), None, None, pixels(7)),
          Turn("t2i", [5, 6, 7], None), Turn("edit", [9], codes(8), None, None, pixels(8))]
    batched = p.generate_images(m, ts, 2.5, GREEDY)
    one_by_one = torch.cat([p.generate_images(m, [t], 2.5, GREEDY) for t in ts])
    assert torch.equal(batched, one_by_one)
    assert not torch.equal(p.generate_images(m, ts, 1.0, GREEDY), batched)
    # the source pixels steer the edit
    moved = [Turn("edit", [1, 2], codes(7), None, None, pixels(9))]
    assert not torch.equal(p.generate_images(m, moved, 2.5, GREEDY), batched[:1])


# ---------------------------------------------------------------------------------------------
# end to end: the real Trainer and Pipeline

ENC = ["decoupled.encoder.dim=32", "decoupled.encoder.n_layers=1", "decoupled.encoder.n_heads=2",
       "decoupled.encoder.embed_dim=32"]


def tiny(tok, *over):
    return load_config(RunConfig, "configs/tiny.toml",
                       [f"image_tokenizer_path={tok}", "paradigm=decoupled", *ENC, *over])


@pytest.fixture(scope="session")
def tiny_run(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    tr = new_trainer(tiny(tiny_tokenizer), d, progress=False)
    tr.fit()
    return d, tr


@pytest.mark.slow
def test_tiny_run_serves_every_task_and_reloads_identically(tiny_run):
    from unimm.pipeline import Pipeline
    d, tr = tiny_run
    assert "encoder.patch.weight" in {k.removeprefix("extras.") for k in tr.model.state_dict()}
    live = Pipeline(tr.parts, model=tr.model.eval())
    loaded = Pipeline.load(d, device="cpu")
    w = ShapesWorld("test")
    imgs = [w.image(i) for i in range(3)]
    qs = ["How many shapes are there?", "What color is the circle?", "Describe the picture."]
    assert live.answer(imgs, qs) == loaded.answer(imgs, qs)
    assert isinstance(live.caption(imgs[0]), str) and isinstance(live.ask(imgs[1], qs[0]), str)
    for a, b in zip(live.draw(["a red circle", "two squares"]),
                    loaded.draw(["a red circle", "two squares"])):
        assert a.shape == (32, 32, 3) and np.array_equal(a, b)
    e1 = live.edit(imgs[0], "Remove the circle.", seed=1, temperature=1.0, guidance=2.0)
    e2 = loaded.edit(imgs[0], "Remove the circle.", seed=1, temperature=1.0, guidance=2.0)
    assert e1.shape == (32, 32, 3) and np.array_equal(e1, e2)



@pytest.mark.slow
def test_demo_runs_on_a_decoupled_run(tiny_run, tmp_path):
    from unimm.demo import run_demo
    d, _ = tiny_run
    report = run_demo(tmp_path / "demo", d, 0)                         # `unimm demo --run`
    assert "answers right" in Path(report).read_text()


@pytest.mark.slow
def test_run_starts_from_a_trained_encoder(tiny_tokenizer, tiny_encoder, tmp_path):
    enc, _ = tiny_encoder
    tr = new_trainer(tiny(tiny_tokenizer, f"decoupled.encoder_path={enc}",
                          "decoupled.freeze_encoder=true", "train.max_steps=2"),
                     tmp_path / "r", progress=False)
    _, state = read_encoder(enc)
    own = tr.model.extras["encoder"].state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    tr.fit()
    own = tr.model.extras["encoder"].state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())    # frozen
    # the run carries its encoder: it reloads without the encoder folder
    from unimm.pipeline import Pipeline
    moved = tmp_path / "moved"
    shutil.move(str(enc), moved)
    try:
        again = Pipeline.load(tmp_path / "r", device="cpu").model.extras["encoder"].state_dict()
        assert all(torch.equal(again[k], v) for k, v in state.items())
    finally:
        shutil.move(str(moved), enc)


@pytest.mark.slow
def test_wrong_or_mismatched_encoder_folder_is_a_clear_error(tiny_tokenizer, tiny_encoder,
                                                             tmp_path):
    enc, _ = tiny_encoder
    with pytest.raises(EncoderFileError, match="not a saved encoder"):
        new_trainer(tiny(tiny_tokenizer, f"decoupled.encoder_path={tmp_path}"), tmp_path / "a",
                    progress=False)
    with pytest.raises(EncoderFileError, match="dim: folder 32 vs config 16"):
        new_trainer(tiny(tiny_tokenizer, f"decoupled.encoder_path={enc}",
                         "decoupled.encoder.dim=16"), tmp_path / "b", progress=False)
    bad = tmp_path / "bad"
    shutil.copytree(enc, bad)
    (bad / "encoder.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(EncoderFileError, match="safetensors"):
        read_encoder(bad)
    with pytest.raises(ValueError, match="patch grid"):
        new_trainer(tiny(tiny_tokenizer, "decoupled.encoder.patch_size=8"), tmp_path / "c",
                    progress=False)


# ---------------------------------------------------------------------------------------------
# CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "unimm.cli.main", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_encoder_cli(tmp_path):
    over = ["vit.dim=16", "vit.n_layers=1", "vit.n_heads=2", "vit.embed_dim=16", "text.dim=16",
            "text.n_layers=1", "text.n_heads=2", "text.corpus=100", "steps=3", "batch_size=8",
            "val_scenes=8"]
    r = _cli("train-encoder", "configs/encoder.toml", "-o", str(tmp_path / "e"),
             *[a for k in over for a in ("--set", k)])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 3
    assert read_encoder(tmp_path / "e")[0].dim == 16
    r = _cli("train-encoder", "configs/encoder.toml", "-o", str(tmp_path / "f"),
             "--set", "vit.width=3")
    assert r.returncode == 2 and "unknown config key vit.width" in r.stderr, r.stderr
    assert "valid keys" in r.stderr and not (tmp_path / "f").exists()

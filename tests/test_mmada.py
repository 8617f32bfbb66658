"""Discrete diffusion for text and images (MMaDA): response masking, loss weights, the
block-wise text sampler and its prompt cache, overfitting, and an end-to-end tiny run."""

import random
from pathlib import Path

import pytest
import torch

from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.base import Turn, format_turn
from unimm.paradigms.masked import IGNORE
from unimm.paradigms.mmada import MMaDA, MMaDAConfig, block_counts
from unimm.paradigms.sampling import GREEDY
from unimm.paradigms.sequence import Vocab, collate
from helpers import new_trainer

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))
CFG = MMaDAConfig(text_len=8, block=4, steps_per_block=2, cfg_dropout=0.0)


def model(seed=0, dim=32):
    torch.manual_seed(seed)
    return TokenModel(V.size, BackboneConfig(dim=dim, n_layers=2, n_heads=4, max_seq_len=128))


def vqa(ans=(5, 6), q=(1, 2, 3)):
    return Turn("vqa", list(q), list(range(V.n_image)), list(ans))


def test_text_response_is_a_padded_bidirectional_span_with_masked_labels():
    P = MMaDA(V, CFG)
    rng = random.Random(0)
    fr = []
    for _ in range(50):
        p, lab = P.format_labeled(vqa(), rng)
        resp = p.span[-CFG.text_len:]
        assert len(set(resp)) == 1 and resp[0] > max(p.span[:-CFG.text_len])   # its own span
        clean = [lab[i] if lab[i] != IGNORE else p.tokens[i] for i in range(len(p))]
        assert clean[-CFG.text_len:] == [5, 6] + [V.eos] * 6
        masked = [i for i, t in enumerate(p.tokens) if t == V.mask]
        assert masked and all(i >= len(p) - CFG.text_len for i in masked)
        fr.append(len(masked) / CFG.text_len)
    assert 0.3 < sum(fr) / len(fr) < 0.7                      # t ~ U(0, 1)
    with pytest.raises(ValueError, match="text_len"):
        P.format_labeled(vqa(ans=list(range(9))), rng)


def test_response_attends_both_ways_prompt_stays_causal():
    m, P = model(), MMaDA(V, CFG)
    p, _ = P.format_labeled(vqa(), random.Random(1))
    b = collate([p], V.pad)
    att = P.attention(b.span, b.valid)
    h = P.hidden(m, b.tokens, b.pos, att, {})
    tok = b.tokens.clone()
    tok[0, -1] = 9
    h2 = P.hidden(m, tok, b.pos, att, {})
    L = CFG.text_len
    assert not torch.allclose(h[0, -L], h2[0, -L])                  # first slot sees the last
    assert torch.allclose(h[0, :-L], h2[0, :-L], atol=1e-5)         # the prompt does not


@pytest.mark.parametrize("shift", [False, True])
def test_padding_eos_weighs_less(shift):
    torch.manual_seed(0)
    m = model()
    P1 = MMaDA(V, MMaDAConfig(text_len=8, block=4, steps_per_block=2, pad_weight=1.0, shift=shift))
    P0 = MMaDA(V, MMaDAConfig(text_len=8, block=4, steps_per_block=2, pad_weight=0.0, shift=shift))
    # every response slot masked: labels = [5, 6, eos, eos, ...] (one slot earlier with shift)
    p, lab = MMaDA(V, MMaDAConfig(text_len=8, block=4, steps_per_block=2)).format_labeled(
        vqa(), random.Random(0))
    for i in range(len(p) - 8, len(p)):
        if lab[i] == IGNORE:
            lab[i], p.tokens[i] = p.tokens[i], V.mask
    if shift:
        lab = lab[1:] + [IGNORE]
    p.loss = [x != IGNORE for x in lab]
    b = collate([p], V.pad)
    b.extra = {"labels": torch.tensor([lab])}
    at = slice(-9, -1) if shift else slice(-8, None)
    with torch.no_grad():
        l1, _ = P1.loss(m, b)
        l0, _ = P0.loss(m, b)
        h = P1.hidden(m, b.tokens, b.pos, P1.attention(b.span, b.valid), {})
        ce = torch.nn.functional.cross_entropy(m.logits(h[0, at]).float(), torch.tensor(lab[at]),
                                               reduction="none")
    assert l1.item() == pytest.approx(ce.mean().item(), rel=1e-5)
    assert l0.item() == pytest.approx(ce[:3].mean().item(), rel=1e-5)   # 5, 6, first eos


def test_block_counts():
    assert block_counts(8, 4) == [2, 2, 2, 2] and block_counts(8, 3) == [3, 3, 2]
    with pytest.raises(ValueError):
        MMaDAConfig(text_len=10, block=4)


def _reference_text(P, m, turns):
    """Recompute prompt + response every step, one row at a time."""
    v, L = P.vocab, P.cfg.text_len
    outs = []
    for t in turns:
        p = format_turn(v, t, with_target=False)
        b = collate([p], v.pad)
        n = len(p)
        resp = torch.full((L,), v.mask)
        masked = torch.ones(1, L, dtype=torch.bool)
        pos = torch.cat([b.pos[0], torch.arange(n, n + L)[:, None].expand(L, 3)])[None]
        span = torch.cat([b.span[0], torch.full((L,), 99)])[None]
        i = torch.arange(L)
        for b0 in range(0, L, P.cfg.block):
            blk = (i >= b0) & (i < b0 + P.cfg.block)
            for k in block_counts(P.cfg.block, P.cfg.steps_per_block):
                tokens = torch.cat([b.tokens[0], resp])[None]
                h = P.hidden(m, tokens, pos, P.attention(span, torch.ones_like(span, dtype=bool)), {})
                hs = h[0, -L - 1:-1] if P.cfg.shift else h[0, -L:]
                logits = m.logits(hs, 0, v.text_end).float()
                logits[:, v.n_text:] = float("-inf")
                logits[:, v.eos] = m.logits(hs, v.eos, v.eos + 1).float()[:, 0]
                cand = logits.argmax(-1)
                conf = logits.log_softmax(-1).gather(-1, cand[:, None])[:, 0]
                conf = conf.masked_fill(~(masked[0] & blk), float("-inf"))
                idx = conf.topk(k).indices
                resp[idx] = cand[idx]
                masked[0, idx] = False
            if (resp[:b0 + P.cfg.block] == v.eos).any():
                break
        ans = []
        for tok in resp.tolist():
            if tok in (v.eos, v.mask):
                break
            ans.append(tok)
        outs.append(ans)
    return outs


@pytest.mark.parametrize("shift", [False, True])
def test_cached_blockwise_text_decoding_equals_recompute(shift):
    torch.manual_seed(0)
    m = model(3)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    P = MMaDA(V, MMaDAConfig(**{**CFG.__dict__, "shift": shift}))
    ts = [vqa(q=(1,)), vqa(q=(2, 3, 4, 5)), vqa(q=(7, 7))]
    fast = P.generate_text(m, ts, sampling=GREEDY)
    ref = _reference_text(P, m, ts)
    # batched rows stop together, so a row may decode further blocks than alone: compare the
    # answers up to their first <eos> (all rows run at least the first block)
    assert fast == ref


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_down():
    m = model(0, dim=64)
    P = MMaDA(V, CFG)
    ts = [vqa(ans=(5, 6)), vqa(ans=(7,), q=(4,)),
          Turn("t2i", [1, 2], None, None, [3, 1, 4, 1, 5, 9])]
    batch = P.make_batch(ts, random.Random(0))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, _ = P.loss(m, batch)
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss) and first > 2.0 and loss.item() < 0.1, (first, loss.item())


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.slow
def test_learns_to_answer_by_unmasking(shift):
    """Overfit two questions with different answers, then decode them."""
    m = model(0, dim=64)
    P = MMaDA(V, MMaDAConfig(**{**CFG.__dict__, "shift": shift}))
    ts = [vqa(ans=(5, 6), q=(1, 2)), vqa(ans=(9,), q=(3, 4))]
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    rng = random.Random(0)
    for _ in range(300):
        loss, _ = P.loss(m, P.make_batch(ts * 4, rng))
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert P.generate_text(m.eval(), ts) == [[5, 6], [9]]


@pytest.mark.slow
def test_tiny_run_end_to_end(tiny_tokenizer, tmp_path):
    import numpy as np
    from unimm.data.splits import ShapesWorld
    from unimm.pipeline import Pipeline
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    tok = tiny_tokenizer
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tok}", "paradigm=mmada", "mmada.steps=3"])
    new_trainer(cfg, tmp_path / "run", progress=False).fit()
    pipe = Pipeline.load(tmp_path / "run", device="cpu")
    img = ShapesWorld("test").caption_example(0).image
    assert isinstance(pipe.caption(img), str) and isinstance(pipe.ask(img, "How many?"), str)
    a = pipe.generate("a red circle", n=2, seed=0)
    assert a[0].shape == img.shape and pipe.edit(img, "make it blue", seed=0).shape == img.shape
    again = Pipeline.load(tmp_path / "run", device="cpu").generate("a red circle", n=2, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    from unimm.demo import run_demo
    report = run_demo(tmp_path / "demo", tmp_path / "run", 0)          # `unimm demo --run`
    assert "answers right" in Path(report).read_text()

"""The masked (Show-o / MaskGIT) paradigm: masks, schedule, sampler, prefix cache, CFG,
overfitting, and an end-to-end tiny run. Tiny models, seconds."""

import random
from pathlib import Path

import pytest
import torch

from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.base import Turn, drop_condition, format_turn
from unimm.paradigms.masked import (IGNORE, Masked, MaskedConfig, reveal, reveal_counts)
from unimm.paradigms.sampling import GREEDY, guide
from unimm.paradigms.sequence import Vocab, collate
from helpers import new_trainer

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))


def model(seed=0, layers=2):
    torch.manual_seed(seed)
    m = TokenModel(V.size, BackboneConfig(dim=32, n_layers=layers, n_heads=4, max_seq_len=128))
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    return m.eval()


def gen_turns(n=3, seed=0):
    r = random.Random(seed)
    out = []
    for i in range(n):
        txt = [r.randrange(V.n_text) for _ in range(r.randint(1, 6))]
        img = [r.randrange(V.n_codes) for _ in range(V.n_image)]
        tgt = [r.randrange(V.n_codes) for _ in range(V.n_image)]
        out.append(Turn("edit", txt, img, None, tgt) if i % 2 else Turn("t2i", txt, None, None, tgt))
    return out


def test_image_spans_are_bidirectional_and_text_causal():
    m, P = model(), Masked(V)
    t = Turn("vqa", [1, 2, 3], list(range(V.n_image)), [4, 5])
    p = format_turn(V, t)
    b = collate([p], V.pad)
    h = P.hidden(m, b.tokens, b.pos, P.attention(b.span, b.valid), {})
    span = (b.span[0] > 0).nonzero()[:, 0]
    first, last = int(span[0]), int(span[-1])
    tok = b.tokens.clone()
    tok[0, last] = V.code_start + (int(tok[0, last]) - V.code_start + 1) % V.n_codes
    h2 = P.hidden(m, tok, b.pos, P.attention(b.span, b.valid), {})
    assert not torch.allclose(h[0, first], h2[0, first])          # later code seen by earlier
    assert torch.allclose(h[0, :first], h2[0, :first], atol=1e-5)   # tokens before the span not
    tok = b.tokens.clone()
    tok[0, -1] = 7                                                  # the last text token
    h3 = P.hidden(m, tok, b.pos, P.attention(b.span, b.valid), {})
    assert torch.allclose(h[0, :-1], h3[0, :-1], atol=1e-5)         # text is causal


def test_training_masks_follow_the_schedule_and_labels_align():
    P = Masked(V, MaskedConfig(cfg_dropout=0.0))
    rng = random.Random(0)
    fracs = []
    for t in gen_turns(40, seed=1):
        p, lab = P.format_labeled(t, rng)
        masked = [i for i, tok in enumerate(p.tokens) if tok == V.mask]
        assert masked and all(lab[i] >= V.code_start for i in masked)          # own position
        assert sum(x != IGNORE for x in lab) == len(masked)
        assert p.loss == [x != IGNORE for x in lab]
        fracs.append(len(masked) / V.n_image)
    assert 0.4 < sum(fracs) / len(fracs) < 0.8                  # E[cos(pi/2 u)] = 2/pi ~ 0.64
    p, lab = P.format_labeled(Turn("vqa", [1, 2], list(range(V.n_image)), [5, 6]), rng)
    assert [x for x in lab if x != IGNORE] == [5, 6, V.eos]     # next-token labels for text
    assert V.mask not in p.tokens


@pytest.mark.parametrize("n,steps", [(64, 12), (64, 1), (6, 12), (256, 8), (5, 5)])
def test_reveal_counts_sum_to_n_and_follow_the_cosine(n, steps):
    c = reveal_counts(n, steps)
    assert sum(c) == n and len(c) == steps
    assert all(x >= 1 for x in c[:min(n, steps)])
    if steps > 1 and n >= 4 * steps:
        assert c[0] < c[-1]                          # cosine: few early, many late


def test_sampler_reveals_every_position_exactly_once():
    g = torch.Generator().manual_seed(0)
    B, N, K, steps = 3, 20, 7, 6
    masked = torch.ones(B, N, dtype=torch.bool)
    seen = torch.zeros(B, N, dtype=torch.long)
    for s, k in enumerate(reveal_counts(N, steps)):
        logits = torch.randn(B, N, K, generator=g)
        _, new = reveal(logits, masked, k, GREEDY, noise=1.0, generator=g)
        assert (new.sum(1) == k).all() and not (new & ~masked).any()
        seen += new.long()
        masked &= ~new
    assert (seen == 1).all()


def test_shifted_labels_sit_one_position_before_the_masked_code():
    """masked.shift: the hidden state before a masked code predicts it (AR alignment)."""
    plain, shifted = Masked(V, MaskedConfig(cfg_dropout=0.0)), \
        Masked(V, MaskedConfig(cfg_dropout=0.0, shift=True))
    for t in gen_turns(20, seed=4):
        p0, lab0 = plain.format_labeled(t, random.Random(7))
        p1, lab1 = shifted.format_labeled(t, random.Random(7))
        assert p0.tokens == p1.tokens                                 # the same codes masked
        assert lab1 == lab0[1:] + [IGNORE]                            # one position earlier
        assert all(p1.tokens[i + 1] == V.mask for i, x in enumerate(lab1) if x != IGNORE)
        boi = len(p1) - V.n_image - 3                                 # the target's <boi>
        assert p1.tokens[boi] == V.boi
        if p1.tokens[boi + 1] == V.mask:                              # code 0: read at <boi>
            assert lab1[boi] == t.target_image[0] + V.code_start


def _reference_images(P, m, turns, guidance, steps):
    """Recompute the whole sequence (prompt + image) every step, cond and uncond separately."""
    v = P.vocab
    B, N = len(turns), v.n_image
    lo, hi = v.code_start, v.code_start + v.n_codes
    codes = torch.zeros(B, N, dtype=torch.long)
    masked = torch.ones(B, N, dtype=torch.bool)

    def logits_for(ts, img_tokens):
        out = []
        for t, row in zip(ts, img_tokens):
            p = format_turn(v, t, with_target=False)
            b = collate([p], v.pad)
            tokens = torch.cat([b.tokens[0], row])[None]
            pos = torch.cat([b.pos[0], torch.tensor(
                [(len(p) + k, *divmod(k, v.grid[1])) for k in range(N)])])[None]
            span = torch.cat([b.span[0], torch.full((N,), 99)])[None]
            h = P.hidden(m, tokens, pos, P.attention(span, torch.ones_like(span, dtype=bool)), {})
            out.append(m.logits(h[0, -N - 1:-1] if P.cfg.shift else h[0, -N:], lo, hi))
        return torch.stack(out)

    for k in reveal_counts(N, steps):
        tok = torch.where(masked, v.mask, codes + lo)
        logits = logits_for(turns, tok)
        if guidance != 1.0:
            logits = guide(torch.cat([logits, logits_for([drop_condition(t) for t in turns], tok)]),
                           guidance)
        cand, new = reveal(logits, masked, k, GREEDY)
        codes = torch.where(new, cand, codes)
        masked &= ~new
    return codes


@pytest.mark.parametrize("guidance,shift", [(1.0, False), (2.5, False), (2.5, True)])
def test_prefix_cache_and_batched_cfg_equal_full_recompute(guidance, shift):
    m, P = model(1), Masked(V, MaskedConfig(steps=4, shift=shift))
    ts = gen_turns(3, seed=2)
    fast = P.generate_images(m, ts, guidance, GREEDY)
    ref = _reference_images(P, m, ts, guidance, 4)
    assert torch.equal(fast, ref)
    assert fast.min() >= 0 and fast.max() < V.n_codes


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_down(shift):
    torch.manual_seed(0)
    m = TokenModel(V.size, BackboneConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    P = Masked(V, MaskedConfig(cfg_dropout=0.0, shift=shift))
    ts = gen_turns(4, seed=3) + [Turn("vqa", [1, 2], list(range(V.n_image)), [9, 10])]
    batch = P.make_batch(ts, random.Random(0))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, stats = P.loss(m, batch)
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert torch.isfinite(loss) and first > 2.0 and loss.item() < 0.1, (first, loss.item())


@pytest.mark.slow
def test_tiny_run_end_to_end(tiny_tokenizer, tmp_path):
    import numpy as np
    from unimm.data.splits import ShapesWorld
    from unimm.pipeline import Pipeline
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    tok = tiny_tokenizer
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tok}", "paradigm=masked", "masked.steps=3"])
    tr = new_trainer(cfg, tmp_path / "run", progress=False)
    tr.fit()
    pipe = Pipeline.load(tmp_path / "run", device="cpu")
    img = ShapesWorld("test").caption_example(0).image
    assert isinstance(pipe.caption(img), str) and isinstance(pipe.ask(img, "How many?"), str)
    a = pipe.generate("a red circle", n=2, seed=0)
    e = pipe.edit(img, "make it blue", seed=0)
    assert a[0].shape == img.shape == e.shape and a[0].dtype == np.uint8
    again = Pipeline.load(tmp_path / "run", device="cpu").generate("a red circle", n=2, seed=0)
    assert all(np.array_equal(x, y) for x, y in zip(a, again))
    from unimm.demo import run_demo
    report = run_demo(tmp_path / "demo", tmp_path / "run", 0)          # `unimm demo --run`
    assert "answers right" in Path(report).read_text()
    # `unimm bench decoding --vary confidence_noise=0,5 --guidance 1.5`: one row per setting,
    # each drawn with that setting, and the run's own setting restored afterwards
    from unimm.bench.decoding import bench_decoding, markdown, parse_vary
    from unimm.utils.config import ConfigError
    vary = parse_vary(["confidence_noise=0,5"], pipe.paradigm)
    assert vary == {"confidence_noise": [0, 5]}
    seen = []
    draw = pipe.draw
    pipe.draw = lambda *a, **k: seen.append(pipe.paradigm.cfg.confidence_noise) or draw(*a, **k)
    r = bench_decoding(pipe, n_t2i=3, n_edit=0, n_geneval=0, vary=vary, guidance=[1.5])
    assert [row["confidence_noise"] for row in r["rows"]] == [0, 5] and seen == [0.0, 5.0]
    assert pipe.paradigm.cfg.confidence_noise == 0.0 and r["rows"][0]["edit_success"] is None
    assert "| confidence_noise | guidance |" in markdown(r)
    for bad, says in [(["shift"], "KEY=V1,V2"), (["nope=1"], "its settings: cfg_dropout"),
                      (["confidence_noise=-1"], "confidence_noise must be >= 0"),
                      (["steps=two"], "expected an integer"),
                      (["steps=2", "masked.steps=3"], "given twice")]:
        with pytest.raises(ConfigError, match=says):
            parse_vary(bad, pipe.paradigm)


def test_spread_reveals_no_two_neighbours_while_others_remain():
    """masked.spread = r: a step's revealed codes are pairwise more than r cells apart
    (Chebyshev) while such candidates exist, then it falls back to confidence order; every
    position is still revealed exactly once over the schedule."""
    from unimm.paradigms.masked import spread_topk
    g = torch.Generator().manual_seed(0)
    grid, N = (8, 8), 64
    conf = torch.randn(3, N, generator=g)
    idx = spread_topk(conf, 8, grid, 1)
    for row in idx.tolist():
        assert len(set(row)) == 8
        for a in row:
            for b in row:
                if a != b:
                    assert max(abs(a // 8 - b // 8), abs(a % 8 - b % 8)) > 1
    only = torch.full((1, N), float("-inf"))
    only[0, [0, 1, 8, 9]] = torch.tensor([4.0, 3.0, 2.0, 1.0])       # one 2x2 block left
    assert spread_topk(only, 3, grid, 1).tolist() == [[0, 1, 8]]       # falls back, in order
    masked = torch.ones(2, N, dtype=torch.bool)
    count = torch.zeros(2, N, dtype=torch.long)
    for k in reveal_counts(N, 12):
        logits = torch.randn(2, N, 5, generator=g)
        _, new = reveal(logits, masked, k, GREEDY, noise=1.0, generator=g, grid=grid, spread=1)
        assert int(new.sum()) == 2 * k
        count += new
        masked &= ~new
    assert bool((count == 1).all())
    with pytest.raises(ValueError, match="spread = -1 is out of range"):
        MaskedConfig(spread=-1)

"""The autoregressive paradigm: cache = recompute, causality, constrained decoding, batched CFG,
overfitting. Tiny models, tokens only (no tokenizers needed)."""

import random

import pytest
import torch
from reference import greedy_text_by_recompute

from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.ar import ARConfig, Autoregressive
from unimm.paradigms.base import Turn, drop_condition, format_turn
from unimm.paradigms.sampling import GREEDY, SamplingConfig, guide, sample
from unimm.paradigms.sequence import Vocab, collate

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))


def model(seed=0, layers=2):
    torch.manual_seed(seed)
    m = TokenModel(V.size, BackboneConfig(dim=32, n_layers=layers, n_heads=4, max_seq_len=128))
    # larger weights so that logits actually depend on the context in these tiny tests
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    return m.eval()


def turns(n=3, seed=0):
    r = random.Random(seed)
    out = []
    for i in range(n):
        txt = [r.randrange(V.n_text) for _ in range(r.randint(1, 6))]
        img = [r.randrange(V.n_codes) for _ in range(V.n_image)]
        out.append(Turn("edit" if i % 2 else "t2i", txt, img if i % 2 else None))
    return out


def greedy_images_by_recompute(m, ts, guidance):
    """Reference: no cache, no batching across rows, full forward at every step."""
    out = []
    for t in ts:
        rows = [format_turn(V, t, with_target=False)]
        if guidance != 1.0:
            rows.append(format_turn(V, drop_condition(t), with_target=False))
        seqs = [(list(r.tokens), list(r.pos)) for r in rows]
        codes = []
        for k in range(V.n_image):
            logits = []
            for toks, pos in seqs:
                h = m.hidden(torch.tensor([toks]), torch.tensor([pos]))[0, -1]
                logits.append(m.logits(h, V.code_start, V.code_start + V.n_codes))
            lg = logits[0] if guidance == 1.0 else logits[1] + guidance * (logits[0] - logits[1])
            c = int(lg.argmax())
            codes.append(c)
            for toks, pos in seqs:
                t0 = len(toks) - k
                r_, c_ = divmod(k, V.grid[1])
                toks.append(V.code_start + c)
                pos.append((t0 + k, r_, c_))          # absolute row / col (sequence.py)
        out.append(codes)
    return torch.tensor(out)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cached_batched_image_decoding_equals_full_recompute(guidance):
    m = model()
    ts = turns(3)
    ar = Autoregressive(V)
    fast = ar.generate_images(m, ts, guidance, GREEDY)
    ref = greedy_images_by_recompute(m, ts, guidance)
    assert torch.equal(fast, ref)


def test_batched_cfg_equals_separate_cond_uncond_passes():
    m = model(1)
    ts = turns(2, seed=3)
    ar = Autoregressive(V)
    batched = ar.generate_images(m, ts, 2.5, GREEDY)
    one_by_one = torch.cat([ar.generate_images(m, [t], 2.5, GREEDY) for t in ts])
    assert torch.equal(batched, one_by_one)
    # guidance changes the result at all (otherwise the test above would be vacuous)
    assert not torch.equal(ar.generate_images(m, ts, 1.0, GREEDY), batched)


def t2i_turns(n=4, seed=5):
    r = random.Random(seed)
    return [Turn("t2i", [r.randrange(V.n_text) for _ in range(1 + i % 6)]) for i in range(n)]


@pytest.mark.parametrize("uncond", ["drop", "pad"])
def test_shared_unconditional_prefix_fill_equals_the_plain_fill(uncond):
    """Guided t2i rows whose unconditional twins share a prefix (<bos> + <pad> x n, or a
    dropped condition) fill that prefix once: same hidden states and cache slots as filling
    every row, and the same images."""
    m = model(6)
    ar = Autoregressive(V, ARConfig(uncond=uncond))
    ts = t2i_turns()
    rows = [format_turn(V, t, with_target=False) for t in ts]
    rows += [ar.unconditional(t) for t in ts]
    lead = ar.shared_guidance_prefix(rows[len(ts):])
    assert lead is not None
    batch = collate(rows, V.pad, left=True)
    R, T = batch.tokens.shape
    mask = ar.prefix_attention(batch)
    with torch.no_grad():
        plain = m.new_cache(R, T + 2)
        h_plain = ar.hidden(m, batch.tokens, batch.pos, mask, {}, cache=plain, last=True)[:, -1]
        shared = m.new_cache(R, T + 2)
        h_shared = ar._fill_guided(m, batch, mask, len(ts) + lead, shared)
    assert shared.length == plain.length == T
    assert torch.allclose(h_shared, h_plain, atol=1e-5)
    real = batch.valid[None, :, None, :, None]              # slots of real tokens
    for a, b in ((shared.k, plain.k), (shared.v, plain.v)):
        assert torch.allclose(a[..., :T, :] * real, b[..., :T, :] * real, atol=1e-5)
    fast = ar.generate_images(m, ts, 3.0, GREEDY)
    if uncond == "drop":                                      # the reference's guidance rows
        assert torch.equal(fast, greedy_images_by_recompute(m, ts, 3.0))
    ar.shared_guidance_prefix = lambda rows: None             # the plain fill
    assert torch.equal(fast, ar.generate_images(m, ts, 3.0, GREEDY))


def test_unconditional_rows_without_a_common_prefix_are_filled_row_by_row():
    ar = Autoregressive(V, ARConfig(uncond="pad"))
    r = random.Random(1)
    edits = [Turn("edit", [1, 2], [r.randrange(V.n_codes) for _ in range(V.n_image)])
             for _ in range(2)]                               # different source images
    assert ar.shared_guidance_prefix([ar.unconditional(t) for t in edits]) is None
    same = [Turn("t2i", [3, 4, 5]), Turn("t2i", [6])]
    assert ar.shared_guidance_prefix([ar.unconditional(t) for t in same]) == 0


def test_cached_text_decoding_equals_full_recompute():
    m = model(2)
    ar = Autoregressive(V)
    t = Turn("vqa", [3, 4, 5], list(range(V.n_image)))
    fast = ar.generate_text(m, [t, Turn("vqa", [7], list(range(V.n_image)))], 8, GREEDY)[0]
    ref = greedy_text_by_recompute(ar, m, t)
    assert fast == ref


def test_future_tokens_cannot_change_past_logits():
    m = model(3)
    p = format_turn(V, Turn("t2i", [1, 2, 3], None, None, list(range(V.n_image))))
    a = torch.tensor([p.tokens])
    b = a.clone()
    b[0, -4:] = (b[0, -4:] + 5) % V.size
    pos = torch.tensor([p.pos])
    la, lb = m(a, pos), m(b, pos)
    assert torch.allclose(la[0, :-4], lb[0, :-4], atol=1e-5)
    assert not torch.allclose(la[0, -3:], lb[0, -3:], atol=1e-3)


def test_constrained_decoding_never_emits_text_inside_an_image():
    m = model(4)
    with torch.no_grad():                     # make the head prefer text tokens by a mile
        m.head.weight[: V.code_start] += 5 * m.head.weight[: V.code_start].sign()
        m.backbone.norm.weight.fill_(3.0) if hasattr(m.backbone, "norm") else None
    ar = Autoregressive(V)
    g = torch.Generator().manual_seed(0)
    for cfg in (GREEDY, SamplingConfig(temperature=1.5), SamplingConfig(temperature=1.0, top_p=0.5)):
        codes = ar.generate_images(m, turns(4), 2.0, cfg, g)
        assert codes.shape == (4, V.n_image)
        assert codes.min() >= 0 and codes.max() < V.n_codes


def test_text_decoding_stays_in_the_text_vocabulary():
    m = model(5)
    ar = Autoregressive(V)
    out = ar.generate_text(m, [Turn("vqa", [1], list(range(V.n_image)))] * 3, 10,
                           SamplingConfig(temperature=2.0), torch.Generator().manual_seed(1))
    assert all(0 <= t < V.n_text for seq in out for t in seq)


@pytest.mark.slow
def test_overfitting_one_batch_drives_the_loss_near_zero():
    torch.manual_seed(0)
    m = TokenModel(V.size, BackboneConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    ar = Autoregressive(V, ARConfig(cfg_dropout=0.0))
    r = random.Random(0)
    ts = [Turn("t2i", [r.randrange(40) for _ in range(4)], None, None,
               [r.randrange(16) for _ in range(V.n_image)]) for _ in range(4)]
    ts += [Turn("vqa", [r.randrange(40)], [r.randrange(16) for _ in range(V.n_image)],
                [r.randrange(40) for _ in range(3)]) for _ in range(4)]
    batch = collate([ar.format(t, r) for t in ts], V.pad)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(150):
        loss, stats = ar.loss(m, batch)
        first = first or loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert first > 2.0 and loss.item() < 0.05, (first, loss.item())


def test_loss_covers_only_targets():
    t = Turn("vqa", [1, 2], list(range(V.n_image)), [5, 6])
    p = format_turn(V, t)
    targets = [tok for tok, l in zip(p.tokens, p.loss) if l]
    assert targets == [5, 6, V.eos]
    t = Turn("edit", [1], list(range(V.n_image)), None, [3] * V.n_image)
    p = format_turn(V, t)
    targets = [tok for tok, l in zip(p.tokens, p.loss) if l]
    assert targets == [V.boi] + [V.code_start + 3] * V.n_image + [V.eoi, V.eos]


def test_image_positions_are_absolute_in_row_and_col():
    p = format_turn(V, Turn("edit", [1, 2, 3], list(range(V.n_image)), None, [0] * V.n_image))
    spans = {}
    for tok, pos, sp in zip(p.tokens, p.pos, p.span):
        if sp:
            spans.setdefault(sp, []).append(pos)
    a, b = spans[1], spans[2]
    assert [x[1:] for x in a] == [x[1:] for x in b] == [divmod(k, V.grid[1]) for k in range(V.n_image)]
    assert all(y[0] - x[0] == b[0][0] - a[0][0] for x, y in zip(a, b))


def test_sampling_helpers():
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    assert sample(logits, GREEDY).item() == 1
    g = torch.Generator().manual_seed(0)
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_k=2), g).item() for _ in range(200)}
    assert draws == {1, 3}
    draws = {sample(logits, SamplingConfig(temperature=1.0, top_p=0.3), g).item() for _ in range(50)}
    assert draws == {1}
    two = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    assert torch.allclose(guide(two, 2.0), torch.tensor([[2.0, 0.0]]))
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)


def test_codebook_initialised_code_embeddings_follow_the_codebook():
    m = model()
    cb = torch.randn(V.n_codes, 8)
    cb[1] = cb[0] + 0.01 * torch.randn(8)                     # two near-identical patches
    m.init_codes_from(cb, V.code_start)
    e = m.embed.weight[V.code_start:V.code_start + V.n_codes]
    cos = torch.nn.functional.cosine_similarity
    assert cos(e[0], e[1], dim=0) > 0.99
    assert abs(cos(e[0], e[2], dim=0)) < 0.9
    assert torch.equal(e, m.head.weight[V.code_start:V.code_start + V.n_codes])
    assert 0.01 < e.std().item() < 0.04


def test_sequence_loss_reduction_weighs_each_example_once():
    from unimm.paradigms.base import reduce_loss
    where = torch.tensor([[True, True, True, False], [False, True, False, False]])
    ce = torch.tensor([1.0, 2.0, 3.0, 10.0])           # row 0: 1, 2, 3; row 1: 10
    assert reduce_loss(ce, where, "token").item() == pytest.approx(4.0)
    assert reduce_loss(ce, where, "sequence").item() == pytest.approx((2.0 + 10.0) / 2)
    with pytest.raises(ValueError, match="token, sequence"):
        reduce_loss(ce, where, "row")


def test_image_position_embedding_touches_only_codes_and_starts_neutral():
    torch.manual_seed(0)
    cfg = BackboneConfig(dim=32, n_layers=1, n_heads=4, max_seq_len=128)
    plain = TokenModel(V.size, cfg)
    torch.manual_seed(0)
    m = TokenModel(V.size, cfg, image_grid=V.grid, code_start=V.code_start)
    full = [Turn(t.task, t.text, t.image, None, [1] * V.n_image) for t in turns(3)]
    batch = collate([format_turn(V, t) for t in full], V.pad)
    x0 = m.embed_tokens(batch.tokens, batch.pos)
    assert torch.equal(x0, plain.embed_tokens(batch.tokens, batch.pos))     # zero init
    with torch.no_grad():
        m.image_pos.weight.normal_()
    x1 = m.embed_tokens(batch.tokens, batch.pos)
    changed = (x1 != x0).any(-1)
    assert torch.equal(changed, batch.tokens >= V.code_start)
    # the same cell of two images gets the same offset
    seq = format_turn(V, full[1])
    cells = [(p[1], p[2]) for tok, p in zip(seq.tokens, seq.pos) if tok >= V.code_start]
    assert len(cells) == 2 * V.n_image and cells[:V.n_image] == cells[V.n_image:]


def test_reasoning_and_final_answer_weigh_the_same():
    """A turn that describes the scene before answering (answer_from): the k reasoning tokens
    weigh 1 each and the final answer plus <eos> share k, so the one-word answer is half the
    example's loss, not 1/(k+2) of it."""
    reason, final = [3, 4, 5, 6, 7, 8], [9]
    t = Turn("vqa", [1, 2], list(range(V.n_image)), reason + final, answer_from=len(reason))
    p = format_turn(V, t)
    w = [x for x, l in zip(p.weight, p.loss) if l]
    assert w == [1.0] * 6 + [3.0, 3.0]                      # 6 / (1 + <eos>) each
    b = collate([p, format_turn(V, Turn("vqa", [1], list(range(V.n_image)), [9]))], V.pad)
    assert b.weight.shape == b.tokens.shape and float(b.weight[1].max()) == 1.0
    m = model()
    ar = Autoregressive(V, ARConfig(loss_reduction="sequence"))
    loss, _ = ar.loss(m, b)
    h = m.hidden(b.tokens, b.pos)
    ce = torch.nn.functional.cross_entropy(m.logits(h[:, :-1]).transpose(1, 2), b.tokens[:, 1:],
                                           reduction="none")
    tgt = b.loss[:, 1:]
    wt = b.weight[:, 1:]
    rows = [(ce[i][tgt[i]] * wt[i][tgt[i]]).sum() / wt[i][tgt[i]].sum() for i in range(2)]
    assert torch.allclose(loss, torch.stack(rows).mean(), atol=1e-5)


def test_bidirectional_input_images_open_only_the_input_span():
    """input_images = "bidirectional": a later code of the *input* image changes what earlier
    input codes compute; a later code of the *generated* image still cannot change earlier
    target logits (the generated span stays causal)."""
    m = model(6)
    ar = Autoregressive(V, ARConfig(input_images="bidirectional"))
    r = random.Random(1)
    t = Turn("edit", [1, 2], [r.randrange(16) for _ in range(V.n_image)], None,
             [r.randrange(16) for _ in range(V.n_image)])
    base = collate([format_turn(V, t)], V.pad)
    src = [i for i, s in enumerate(base.span[0].tolist()) if s == 1]
    tgt = [i for i, s in enumerate(base.span[0].tolist()) if s == 2]

    def hidden(tokens):
        return ar.hidden(m, tokens, base.pos, ar.training_mask(base), {})[0]

    h0 = hidden(base.tokens)
    a = base.tokens.clone()
    a[0, src[-1]] = V.code_start + (a[0, src[-1]] - V.code_start + 5) % V.n_codes
    assert not torch.allclose(hidden(a)[src[0]], h0[src[0]], atol=1e-4)      # input: both ways
    b = base.tokens.clone()
    b[0, tgt[-1]] = V.code_start + (b[0, tgt[-1]] - V.code_start + 5) % V.n_codes
    assert torch.allclose(hidden(b)[: tgt[-1]], h0[: tgt[-1]], atol=1e-5)    # target: causal
    # the causal default really is causal over the input image
    causal = Autoregressive(V)
    assert causal.training_mask(base) is None


@pytest.mark.parametrize("task", ["edit", "vqa"])
def test_bidirectional_input_images_train_as_they_sample(task):
    """What the cached samplers produce greedily is what the training forward (with its mask)
    predicts at every target position: training and sampling see the same attention."""
    m = model(7)
    ar = Autoregressive(V, ARConfig(input_images="bidirectional", cfg_dropout=0.0))
    r = random.Random(2)
    img = [r.randrange(16) for _ in range(V.n_image)]
    if task == "edit":
        out = ar.generate_images(m, [Turn("edit", [3, 4], img)], 1.0, GREEDY)[0].tolist()
        full = Turn("edit", [3, 4], img, None, out)
        want, lo, hi = [V.code_start + c for c in out], V.code_start, V.code_start + V.n_codes
    else:
        out = ar.generate_text(m, [Turn("vqa", [3, 4], img)], 6, GREEDY)[0]
        full = Turn("vqa", [3, 4], img, out)
        want, lo, hi = out, 0, V.n_text
    assert out
    batch = collate([format_turn(V, full)], V.pad)
    h = ar.hidden(m, batch.tokens, batch.pos, ar.training_mask(batch), {})[0]
    toks = batch.tokens[0].tolist()
    opener = V.boi if task == "edit" else V.asst          # the token before the first target
    first = len(toks) - 1 - toks[::-1].index(opener) + 1
    pred = m.logits(h[first - 1:first - 1 + len(want)], lo, hi).argmax(-1) + lo
    assert pred.tolist() == want

"""The flow paradigm: masks, overfitting, the ODE solvers, prefix cache = recompute, batched CFG,
text decoding over latent inputs, decoder snapping, and a tiny end-to-end run."""

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from reference import greedy_text_by_recompute
import torch.nn.functional as F

from unimm.model.backbone import BackboneConfig
from unimm.model.masks import span_mask
from unimm.model.unified import TokenModel
from unimm.paradigms import ode
from unimm.paradigms.base import Turn, drop_condition, format_turn
from unimm.paradigms.flow import Flow, FlowConfig
from unimm.paradigms.sampling import GREEDY, SamplingConfig
from unimm.paradigms.sequence import Vocab, collate
from helpers import new_trainer

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))
D_LAT = 8


def fake_tokenizer(seed=0):
    g = torch.Generator().manual_seed(seed)
    cb = F.normalize(torch.randn(V.n_codes, D_LAT, generator=g), dim=-1)   # l2 PatchVQ-like
    return SimpleNamespace(quantizer=SimpleNamespace(codebook=cb))


def model(seed=0, layers=2, dim=32, scale=4.0, **flow):
    torch.manual_seed(seed)
    m = TokenModel(V.size, BackboneConfig(dim=dim, n_layers=layers, n_heads=4, max_seq_len=128))
    fl = Flow(V, FlowConfig(cfg_dropout=0.0, **flow))
    fl.attach(m, fake_tokenizer(seed))
    # larger weights (and a non-zero velocity head) so outputs depend on the context here
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(scale)
        m.extras["flow"].out_proj.weight.normal_(std=0.3)
    return m.eval(), fl


def turns(n=3, seed=0):
    r = random.Random(seed)
    out = []
    for i in range(n):
        txt = [r.randrange(V.n_text) for _ in range(r.randint(1, 6))]
        img = [r.randrange(V.n_codes) for _ in range(V.n_image)]
        out.append(Turn("edit" if i % 2 else "t2i", txt, img if i % 2 else None))
    return out


def target_extra(batch, seed=0):
    """Fixed noisy latents for every target code of a batch."""
    target = batch.loss & (batch.tokens >= V.code_start)
    g = torch.Generator().manual_seed(seed)
    M = int(target.sum())
    return {"target": target, "x_t": torch.randn(M, D_LAT, generator=g),
            "t": torch.rand(M, generator=g)}


# ---- masks ------------------------------------------------------------------------------------
def test_text_is_causal_and_image_spans_are_bidirectional():
    m, fl = model(3)
    t = Turn("edit", [1, 2, 3], list(range(V.n_image)), None, [5] * V.n_image)
    batch = collate([format_turn(V, t)], V.pad)
    att = fl.attention(batch.span, batch.valid)
    ex = target_extra(batch)
    h = fl.hidden(m, batch.tokens, batch.pos, att, ex)[0]                  # (T, D)
    tgt = ex["target"][0].nonzero()[:, 0]                                   # target indices
    src = (batch.span[0] == 1).nonzero()[:, 0]                              # source image
    first, last = int(tgt[0]), int(tgt[-1])

    # future text (<eos> at the end) cannot change anything before it
    b2 = collate([format_turn(V, t)], V.pad)
    b2.tokens[0, -1] = 7
    h2 = fl.hidden(m, b2.tokens, b2.pos, att, ex)[0]
    assert torch.allclose(h[:-1], h2[:-1], atol=1e-5)
    assert not torch.allclose(h[-1], h2[-1], atol=1e-3)

    # the last target latent changes the first (bidirectional span) but nothing before the span
    ex2 = dict(ex, x_t=ex["x_t"].clone())
    ex2["x_t"][-1] += 3.0
    h3 = fl.hidden(m, batch.tokens, batch.pos, att, ex2)[0]
    assert torch.allclose(h[:first], h3[:first], atol=1e-5)
    assert not torch.allclose(h[first], h3[first], atol=1e-3)
    assert not torch.allclose(h[last + 1:], h3[last + 1:], atol=1e-3)    # text after sees it

    # the source image is bidirectional too (its first code sees its last), text before it not
    b4 = collate([format_turn(V, t)], V.pad)
    b4.tokens[0, src[-1]] = V.code_start + (b4.tokens[0, src[-1]] - V.code_start + 1) % V.n_codes
    h4 = fl.hidden(m, b4.tokens, b4.pos, att, ex)[0]
    assert torch.allclose(h[:int(src[0])], h4[:int(src[0])], atol=1e-5)
    assert not torch.allclose(h[int(src[0])], h4[int(src[0])], atol=1e-3)

    # and the mask itself is the span mask plus padding
    assert torch.equal(att[0, 0], span_mask(batch.span[0]))


def test_input_codes_are_read_as_codebook_latents():
    m, fl = model(1)
    t = Turn("vqa", [1, 2], list(range(V.n_image)), [3])
    batch = collate([format_turn(V, t)], V.pad)
    x = fl.embed(m, batch.tokens, batch.pos, {})
    head = m.extras["flow"]
    codes = batch.tokens[0][batch.span[0] > 0] - V.code_start
    want = head.embed(head.latents(codes), torch.ones(len(codes)))
    assert torch.allclose(x[0][batch.span[0] > 0], want, atol=1e-6)
    text = batch.span[0] == 0
    assert torch.equal(x[0][text], m.embed(batch.tokens[0][text]))


def test_input_images_as_codes_keep_their_code_embeddings():
    m, fl = model(1, input_images="codes")
    t = Turn("edit", [1, 2], list(range(V.n_image)), None, [3] * V.n_image)
    batch = collate([format_turn(V, t)], V.pad)
    ex = target_extra(batch)
    x = fl.embed(m, batch.tokens, batch.pos, ex)
    src = (batch.span[0] == 1)                               # the edit's source image
    assert torch.equal(x[0][src], m.embed_tokens(batch.tokens, batch.pos)[0][src])
    head = m.extras["flow"]
    tgt = ex["target"][0]
    want = head.embed(ex["x_t"], ex["t"])                    # the generated image: latents
    assert torch.allclose(x[0][tgt], want, atol=1e-6)


def test_code_prediction_is_the_posterior_mean_and_euler_lands_on_the_code():
    """predict = codes: v = (softmax(code logits) @ codebook - x) / (1 - t). With a posterior
    sure of code k, dx/dt = (c_k - x) / (1 - t) has x(1) = c_k, and Euler's uniform steps hit
    it exactly (each step shrinks x - c_k by (1 - 1/(steps - i)), the last to zero)."""
    m, fl = model(0, predict="codes")
    head = m.extras["flow"]
    cb = head.codebook * head.scale
    k = torch.tensor([3, 7, 0, 15])
    sure = SimpleNamespace(logits=lambda h, lo, hi: 50.0 * F.one_hot(k, hi - lo).float(),
                           extras=m.extras)
    x0 = torch.randn(4, D_LAT, generator=torch.Generator().manual_seed(0))
    for steps in (1, 5, 10):
        out, _ = ode.integrate(lambda x, t: fl.velocity_from_codes(sure, torch.zeros(4, 1), x, t),
                               x0, steps, "euler")
        assert torch.allclose(out, cb[k], atol=1e-5)
    h = torch.randn(4, 32)
    p = m.logits(h, V.code_start, V.size).float().softmax(-1)
    t = torch.tensor([0.0, 0.5, 0.9, 0.99])
    v = fl.velocity_from_codes(m, h, x0, t)
    want = (p @ cb - x0) / torch.tensor([1.0, 0.5, 0.1, 0.05])[:, None]     # min_gap 0.05
    assert torch.allclose(v, want, atol=1e-5)


# ---- training ---------------------------------------------------------------------------------
@pytest.mark.parametrize("flow", [{}, {"predict": "codes", "input_images": "codes"}])
@pytest.mark.slow
def test_loss_is_finite_and_falls_when_overfitting_one_batch(flow):
    torch.manual_seed(0)
    m = TokenModel(V.size, BackboneConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=128))
    fl = Flow(V, FlowConfig(cfg_dropout=0.0, **flow))
    fl.attach(m, fake_tokenizer())
    r = random.Random(0)
    ts = [Turn("t2i", [r.randrange(40) for _ in range(4)], None, None,
               [r.randrange(16) for _ in range(V.n_image)]) for _ in range(4)]
    ts += [Turn("vqa", [r.randrange(40)], [r.randrange(16) for _ in range(V.n_image)],
                [r.randrange(40) for _ in range(3)]) for _ in range(4)]
    batch = fl.make_batch(ts, r)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    hist = []
    for step in range(200):
        loss, stats = fl.loss(m, batch, torch.Generator().manual_seed(step))
        assert torch.isfinite(loss)
        hist.append(stats)
        loss.backward()
        opt.step()
        opt.zero_grad()
    # fresh noise every step: the velocity MSE starts near E|x1 - x0|^2 = 2 per dimension and
    # falls as the model learns which image each prompt means (measured ~2.0 -> ~0.5)
    first_img = np.mean([h["loss/image"] for h in hist[:20]])
    last_img = np.mean([h["loss/image"] for h in hist[-20:]])
    assert hist[0]["loss/text"] > 2.0 and hist[-1]["loss/text"] < 0.1, hist[-1]
    assert 1.5 < first_img and last_img < 0.4 * first_img, (first_img, last_img)


def test_loss_noise_comes_from_the_generator():
    m, fl = model(2)
    full = [Turn(t.task, t.text, t.image, None, [2] * V.n_image) for t in turns(3)]
    batch = fl.make_batch(full, random.Random(0))
    a, _ = fl.loss(m, batch, torch.Generator().manual_seed(5))
    b, _ = fl.loss(m, batch, torch.Generator().manual_seed(5))
    c, _ = fl.loss(m, batch, torch.Generator().manual_seed(6))
    assert a.item() == b.item() and a.item() != c.item()


def test_config_is_validated():
    with pytest.raises(ValueError, match="sampler"):
        FlowConfig(sampler="rk4")
    with pytest.raises(ValueError, match="steps"):
        FlowConfig(steps=0)
    with pytest.raises(ValueError, match="cfg_dropout"):
        FlowConfig(cfg_dropout=1.0)
    with pytest.raises(ValueError, match="predict"):
        FlowConfig(predict="noise")
    with pytest.raises(ValueError, match="input_images"):
        FlowConfig(input_images="pixels")


# ---- the ODE solvers ----------------------------------------------------------------------------
def test_euler_integrates_a_constant_velocity_exactly():
    x0, x1 = torch.randn(4, 3), torch.randn(4, 3)
    for steps in (1, 7):
        out, nfe = ode.integrate(lambda x, t: x1 - x0, x0, steps, "euler")
        assert torch.allclose(out, x1, atol=1e-6) and nfe == steps
    out, nfe = ode.integrate(lambda x, t: x1 - x0, x0, 3, "heun")
    assert torch.allclose(out, x1, atol=1e-6) and nfe == 6 == ode.evaluations("heun", 3)


def test_solvers_converge_at_their_order_on_a_linear_field():
    # dx/dt = a x + b t  has  x(1) = (x0 + b/a^2) e^a - b/a - b/a^2
    a, b = -1.5, 2.0
    x0 = torch.tensor([1.0, -0.5], dtype=torch.float64)
    exact = (x0 + b / a**2) * np.exp(a) - b / a - b / a**2
    err = {}
    for method in ("euler", "heun"):
        err[method] = [float((ode.integrate(lambda x, t: a * x + b * t, x0, n, method)[0]
                              - exact).abs().max()) for n in (8, 16, 32)]
    for e in (err["euler"],):
        assert all(1.8 < e[i] / e[i + 1] < 2.2 for i in range(2)), e       # first order
    for e in (err["heun"],):
        assert all(3.6 < e[i] / e[i + 1] < 4.4 for i in range(2)), e       # second order
    assert err["heun"][0] < err["euler"][0] / 10
    with pytest.raises(ValueError, match="euler, heun"):
        ode.integrate(lambda x, t: x, x0, 2, "rk4")


# ---- sampling -----------------------------------------------------------------------------------
def velocity_at(m, fl, h, T, x, t):
    """The velocity of one recomputed row's image span from its hidden states h (T + N, D)."""
    if fl.cfg.predict == "codes":
        return fl.velocity_from_codes(m, h[T - 1:-1], x, t)
    return m.extras["flow"].out_proj(h[T:])


def images_by_recompute(m, fl, ts, guidance, x0, steps):
    """Reference: Euler with the full sequence (prefix + image span) recomputed at every step,
    one turn at a time, cond and uncond rows separately."""
    head = m.extras["flow"]
    N = V.n_image
    out = []
    for b, t in enumerate(ts):
        rows = [t] + ([drop_condition(t)] if guidance != 1.0 else [])
        seqs = []
        for row in rows:
            p = format_turn(V, row, with_target=False)
            T = len(p)
            toks = torch.tensor([p.tokens + [V.code_start] * N])
            pos = torch.tensor([p.pos + [(T + k, *divmod(k, V.grid[1])) for k in range(N)]])
            span = torch.tensor(p.span + [max(p.span) + 1] * N)
            target = torch.tensor([[False] * T + [True] * N])
            seqs.append((toks, pos, span_mask(span)[None, None], target, T))
        x = x0[b].clone()
        dt = 1.0 / steps
        for i in range(steps):
            vs = []
            for toks, pos, att, target, T in seqs:
                ex = {"target": target, "x_t": x, "t": torch.full((N,), i * dt)}
                h = fl.hidden(m, toks, pos, att, ex)[0]
                vs.append(velocity_at(m, fl, h, T, x, i * dt))
            vel = vs[0] if guidance == 1.0 else vs[1] + guidance * (vs[0] - vs[1])
            x = x + dt * vel
        out.append(x / head.scale)
    return torch.stack(out)


@pytest.mark.parametrize("guidance,flow", [(1.0, {}), (3.0, {}),
                                           (3.0, {"predict": "codes", "input_images": "codes"})])
def test_prefix_cache_gives_the_same_images_as_full_recompute(guidance, flow):
    m, fl = model(0, **flow)
    ts = turns(3)
    x0 = torch.randn(3, V.n_image, D_LAT, generator=torch.Generator().manual_seed(1))
    fast = fl.generate_images(m, ts, guidance, SamplingConfig(1.0),
                              torch.Generator().manual_seed(1), steps=4)
    ref = images_by_recompute(m, fl, ts, guidance, x0, 4)
    assert fast.shape == (3, V.n_image, D_LAT)
    assert torch.allclose(fast, ref, atol=1e-4), (fast - ref).abs().max()
    assert (fast - x0 / m.extras["flow"].scale).abs().max() > 0.1          # it moved


def test_batched_cfg_equals_separate_cond_uncond_passes():
    m, fl = model(1)
    ts = turns(2, seed=3)                              # prompts of different lengths
    batched = fl.generate_images(m, ts, 2.5, GREEDY, steps=3, sampler="heun")
    one_by_one = torch.cat([fl.generate_images(m, [t], 2.5, GREEDY, steps=3, sampler="heun")
                            for t in ts])
    assert torch.allclose(batched, one_by_one, atol=1e-4)
    plain = fl.generate_images(m, ts, 1.0, GREEDY, steps=3, sampler="heun")
    assert not torch.allclose(plain, batched, atol=1e-2)   # guidance does something
    assert fl.function_evaluations(3, "heun") == 6


def test_cached_text_decoding_over_latent_images_equals_full_recompute():
    m, fl = model(2)
    t = Turn("vqa", [3, 4, 5], list(range(V.n_image)))
    fast = fl.generate_text(m, [t, Turn("vqa", [7], [1] * V.n_image)], 8, GREEDY)[0]
    ref = greedy_text_by_recompute(fl, m, t)
    assert fast == ref and len(ref) > 0
    p = format_turn(V, t, with_target=False)
    # the prompt's last hidden state under left padding sees the input image bidirectionally,
    # as in training (greedy tokens alone are too coarse to tell the masks apart)
    other = Turn("vqa", [7, 8, 9, 10, 11, 12], [1] * V.n_image)
    batch = collate([format_turn(V, x, with_target=False) for x in (t, other)], V.pad, left=True)
    h = fl.hidden(m, batch.tokens, batch.pos, fl.prefix_attention(batch), {})[0, -1]
    toks, pos = torch.tensor([p.tokens]), torch.tensor([p.pos])
    bidir = fl.hidden(m, toks, pos, span_mask(torch.tensor(p.span))[None, None], {})[0, -1]
    causal = fl.hidden(m, toks, pos, None, {})[0, -1]
    assert torch.allclose(h, bidir, atol=1e-5) and not torch.allclose(h, causal, atol=1e-3)


# ---- decoding and the real stack ----------------------------------------------------------------
def test_snapping_to_the_nearest_code_decodes_noisy_latents_more_faithfully(tiny_tokenizer):
    from unimm.data.splits import ShapesWorld
    from unimm.tokenizers.image import load_image_tokenizer
    tok = load_image_tokenizer(tiny_tokenizer)
    w = ShapesWorld("test")
    codes = tok.encode(np.stack([w.image(i) for i in range(16)]))        # (n, h, w)
    clean = tok.decode(codes).astype(float)
    z = tok.quantizer.lookup(codes)
    g = torch.Generator().manual_seed(0)
    z = z + 0.2 / z.shape[-1] ** 0.5 * torch.randn(z.shape, generator=g)  # 20 % of a code's norm
    fl_snap, fl_cont = (Flow(Vocab(10, tok.codebook_size, tok.grid), FlowConfig(decode=d))
                        for d in ("nearest_code", "continuous"))
    flat = z.reshape(len(z), -1, z.shape[-1])                              # (n, N, d)
    snap, cont = fl_snap.to_pixels(tok, flat), fl_cont.to_pixels(tok, flat)
    assert snap.shape == clean.shape and snap.dtype == cont.dtype == np.uint8
    err = {k: np.abs(x.astype(float) - clean).mean() for k, x in (("snap", snap), ("cont", cont))}
    assert err["snap"] < 0.5 * err["cont"], err


@pytest.mark.slow
def test_end_to_end_tiny_run_and_reload(tiny_tokenizer, tmp_path):
    from unimm.data.splits import ShapesWorld
    from unimm.pipeline import Pipeline
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tiny_tokenizer}", "paradigm=flow",
                       "train.max_steps=6", "flow.steps=3"])
    tr = new_trainer(cfg, tmp_path / "run", progress=False)
    tr.fit()
    assert "extras.flow.codebook" in tr.model.state_dict()
    live = Pipeline(tr.parts, model=tr.model.eval())
    loaded = Pipeline.load(tmp_path / "run", device="cpu")
    w = ShapesWorld("test")
    img = w.image(0)
    for pipe in (live, loaded):
        assert isinstance(pipe.caption(img), str)
        assert isinstance(pipe.ask(img, "How many shapes are there?"), str)
        g = pipe.generate("a red circle", n=2, seed=0, temperature=1.0)
        assert len(g) == 2 and g[0].shape == (32, 32, 3) and g[0].dtype == np.uint8
        e = pipe.edit(img, "Remove the circle.", seed=1)
        assert e.shape == (32, 32, 3) and e.dtype == np.uint8
    qs = ["How many shapes are there?", "Describe the picture."]
    assert live.answer([img, w.image(1)], qs) == loaded.answer([img, w.image(1)], qs)
    for a, b in zip(live.generate("two squares", n=2, seed=3, temperature=1.0, guidance=2.0),
                    loaded.generate("two squares", n=2, seed=3, temperature=1.0, guidance=2.0)):
        assert np.array_equal(a, b)
    assert np.array_equal(live.edit(img, "Remove the circle.", seed=2, temperature=1.0),
                          loaded.edit(img, "Remove the circle.", seed=2, temperature=1.0))


def test_resume_gives_the_same_next_loss(tiny_tokenizer, tmp_path):
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tiny_tokenizer}", "paradigm=flow"])
    a = new_trainer(cfg, tmp_path / "a", progress=False)
    losses = [a.train_step()["loss"] for _ in range(4)]
    b = new_trainer(cfg, tmp_path / "b", progress=False)
    for _ in range(2):
        b.train_step()
    b.checkpoint()
    del b
    c = new_trainer(cfg, tmp_path / "b", progress=False)
    assert c.resume() and c.step == 2
    nxt = [c.train_step()["loss"] for _ in range(2)]
    assert nxt == pytest.approx(losses[2:], rel=1e-6, abs=1e-7)

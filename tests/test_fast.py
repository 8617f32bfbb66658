"""The fast package (unimm.fast) against the plain model, path by path: the packed linears
equal F.linear; blocked / explicit attention equal SDPA in values and gradients; a whole
backbone through the fast ops table computes what the plain table computes. Skipped as a whole
when the fast package is off (UNIMM_FAST=0) or missing."""

import contextlib
import dataclasses

import pytest
import torch

from unimm.model import Backbone, ops, positions_1d
from unimm.model.backbone import BackboneConfig

if ops.fast is None:
    pytest.skip("unimm.fast is off (UNIMM_FAST=0) or not installed: its paths are not in use",
                allow_module_level=True)

GQA_QKNORM = BackboneConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True,
                            max_seq_len=64)


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=0)


# ---- packed linears and bf16-training attention (fast/linear.py, fast/attention.py) --------

@pytest.mark.parametrize("h,g,t,s", [(4, 4, 6, 6), (4, 2, 6, 6), (4, 1, 3, 9), (2, 2, 5, 5)])
def test_explicit_attention_equals_sdpa_values_and_gradients(h, g, t, s):
    """The bf16-training path (two matmuls, float32 softmax) computes SDPA's function: outputs
    and gradients match in float32 for padded/bidirectional masks, causal and GQA; so does
    `blocked_attention` (its own backward), whole and in pieces."""
    import torch.nn.functional as F
    from unimm.fast.attention import blocked_attention, explicit_attention
    torch.manual_seed(0)
    b, e = 2, 8
    mask = torch.rand(b, 1, t, s) > 0.4
    mask[..., torch.arange(t), torch.arange(s - t, s)] = True        # keep the diagonal
    cases = [(mask, False), (mask[:1], False)] + ([(None, True)] if t == s else [])
    for m, causal in cases:
        q, k, v = (torch.randn(b, n, L, e, requires_grad=True)
                   for n, L in ((h, t), (g, s), (g, s)))
        ref = F.scaled_dot_product_attention(q, k.repeat_interleave(h // g, 1),
                                             v.repeat_interleave(h // g, 1), attn_mask=m,
                                             is_causal=causal)
        grads_ref = torch.autograd.grad(ref.square().sum(), (q, k, v), retain_graph=True)
        # whole batch, and one sequence at a time (scores over the chunk budget); the blocked
        # path also in blocks of 2 query rows (causal blocks then read only their keys)
        runs = [lambda cb=cb: explicit_attention(q, k, v, m, causal, 0.0, chunk_bytes=cb)
                for cb in (1 << 30, 1)]
        runs += [lambda bl=bl, pb=pb: blocked_attention(q, k, v, m, causal, bl, pb)
                 for bl in (64, 2) for pb in (1 << 30, 1)]
        for run in runs:
            out = run()
            assert close(out, ref)
            grads = torch.autograd.grad(out.square().sum(), (q, k, v))
            assert all(close(a, c, atol=1e-4) for a, c in zip(grads, grads_ref))


def test_blocked_attention_in_bf16_is_as_close_to_float32_as_the_explicit_path():
    """In bf16 (where training uses it) blocked_attention's values and gradients are as close
    to the float32 function as explicit_attention's (autograd's), causal and masked, GQA."""
    import torch.nn.functional as F
    from unimm.fast.attention import blocked_attention, explicit_attention
    torch.manual_seed(0)
    b, t, e = 3, 70, 32
    for h, g in ((6, 6), (6, 2)):
        q32 = torch.randn(b, h, t, e)
        k32, v32 = torch.randn(b, g, t, e), torch.randn(b, g, t, e)
        mask = (torch.rand(b, 1, t, t) > 0.3) | torch.eye(t, dtype=torch.bool)
        for m, causal in ((None, True), (mask, False)):
            leaves = [x.clone().requires_grad_() for x in (q32, k32, v32)]
            ref = F.scaled_dot_product_attention(
                leaves[0], leaves[1].repeat_interleave(h // g, 1),
                leaves[2].repeat_interleave(h // g, 1), attn_mask=m, is_causal=causal)
            up = torch.randn_like(ref)
            g_ref = torch.autograd.grad(ref, leaves, up)
            err = {}
            for name, fn in (("explicit", explicit_attention), ("blocked", blocked_attention)):
                xs = [x.bfloat16().requires_grad_() for x in (q32, k32, v32)]
                out = fn(*xs, m, causal, 0.0) if name == "explicit" else fn(*xs, m, causal, 16)
                grads = torch.autograd.grad(out, xs, up.bfloat16())
                err[name] = [float((out.detach().float() - ref.detach()).abs().max())] + \
                    [float((a.float() - c).abs().max()) for a, c in zip(grads, g_ref)]
            assert all(x <= 2 * y + 1e-2 for x, y in zip(err["blocked"], err["explicit"])), err


def test_bf16_training_takes_the_blocked_path_and_stays_finite_on_padded_rows(monkeypatch):
    """Under bf16 autocast with gradients attention runs as `blocked_attention` (with dropout,
    `explicit_attention`); a fully masked query row (which the builders never make, but a
    caller might) still gives finite values and gradients on both."""
    import unimm.fast.attention as fast_attention
    calls = []
    for name in ("blocked_attention", "explicit_attention"):
        fn = getattr(fast_attention, name)
        monkeypatch.setattr(fast_attention, name,
                            lambda *a, _f=fn, _n=name, **k: (calls.append(_n), _f(*a, **k))[1])
    cfg = GQA_QKNORM
    for dropout, path in ((0.0, "blocked_attention"), (0.1, "explicit_attention")):
        torch.manual_seed(0)
        m = Backbone(dataclasses.replace(cfg, dropout=dropout)).train()
        x = torch.randn(2, 5, cfg.dim, requires_grad=True)
        mask = torch.ones(2, 5, 5, dtype=torch.bool).tril()
        mask[1, 4] = False                                              # one empty row
        calls.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x, positions_1d(2, 5), mask)
        y.float().sum().backward()
        assert calls and set(calls) == {path}
        assert torch.isfinite(y.float()).all() and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this build")
def test_packed_linear_matches_f_linear_and_follows_weight_changes():
    """Inference over many rows runs oneDNN on a packed copy of the weight: the same product,
    packed again after an in-place change (an optimizer step, a load); with autograd, F.linear."""
    import gc

    import torch.nn.functional as F

    from unimm.fast import linear as fl
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(96, 64))
    x = torch.randn(3, fl.PACKED_MIN_ROWS, 64)
    with torch.no_grad():
        y = fl.linear(x, w)
        assert (id(w), 0, 96) in fl._packed                   # the packed path ran
        assert torch.allclose(y, F.linear(x, w), rtol=1e-5, atol=1e-5)
        w.mul_(-2.0)                                              # stale packing must not be used
        assert torch.allclose(fl.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
        w.data = torch.randn(96, 64)                              # new data, same version
        assert torch.allclose(fl.linear(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)
        few = x[:1, :8]                                           # few rows: F.linear exactly
        assert torch.equal(fl.linear(few, w), F.linear(few, w))
        for rows in (x, few):                   # SwiGLU: fused into oneDNN's GEMMs, or plain
            g, u = F.linear(rows, w).chunk(2, dim=-1)
            assert torch.allclose(fl.swiglu(rows, w), F.silu(g) * u, rtol=1e-5, atol=1e-5)
        assert (id(w), 0, 48) in fl._packed and (id(w), 48, 96) in fl._packed
        with torch.autocast("cpu", dtype=torch.bfloat16):         # autocast keeps its bf16
            assert fl.linear(x, w).dtype == torch.bfloat16
    out = fl.linear(x, w)                                     # autograd: F.linear
    out.sum().backward()
    assert w.grad is not None and torch.equal(out, F.linear(x, w))
    key = (id(w), 0, 96)
    del w, out
    gc.collect()
    assert key not in fl._packed                              # freed with its weight


def test_install_fills_the_ops_table_and_plain_restores_it():
    """Importing the model package installed the fast paths into the ops table; `ops.plain()`
    runs the plain operations for a while and puts the fast ones back."""
    from unimm.fast import attention, linear
    fast = (linear.linear, linear.swiglu, attention.attention)
    assert (ops.linear, ops.swiglu, ops.attention) == fast
    with ops.plain():
        assert (ops.linear, ops.swiglu, ops.attention) == (
            ops.plain_linear, ops.plain_swiglu, ops.plain_attention)
    assert (ops.linear, ops.swiglu, ops.attention) == fast
    with pytest.raises(ValueError, match="unknown operations.*'attention'"):
        ops.use(matmul=None)


@pytest.mark.parametrize("cfg", [GQA_QKNORM, BackboneConfig(dim=32, n_layers=2, n_heads=2,
                                                            max_seq_len=64)])
def test_the_fast_table_computes_what_the_plain_table_computes(cfg):
    """A whole backbone through the fast table against the plain one: a float32 prompt fill
    over 256+ rows (the packed projections) gives the same hidden states and cache; bf16
    training with gradients (blocked attention) the same loss and gradients up to bf16
    rounding."""
    torch.manual_seed(0)
    m = Backbone(cfg).eval()
    b, t = 5, 60                                                        # 300 rows
    x, pos = torch.randn(b, t, cfg.dim), positions_1d(b, t)
    mask = torch.ones(b, 1, t, t, dtype=torch.bool).tril()
    mask[0, ..., :3] = False                                            # some left padding
    mask |= torch.eye(t, dtype=torch.bool)
    runs = []
    for table in (contextlib.nullcontext, ops.plain):                  # fast, then plain
        with table(), torch.no_grad():
            cache = m.new_cache(b, t + 2)
            h = m(x, pos, mask, cache=cache, last=True)
        m.train()
        xg = x[:2].clone().requires_grad_()
        with table(), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = m(xg, pos[:2], mask[:2]).float().square().mean()
        grads = torch.autograd.grad(loss, [xg, *m.parameters()])
        m.eval()
        runs.append((h, cache.k, cache.v, loss.detach(), grads))
    (h, k, v, loss, grads), (h0, k0, v0, loss0, grads0) = runs
    torch.testing.assert_close(h, h0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, k0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, v0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, loss0, atol=0.02 * float(loss0), rtol=0)
    for a, c in zip(grads, grads0):
        assert (a.float() - c.float()).abs().max() <= 0.05 * c.float().abs().max() + 1e-6

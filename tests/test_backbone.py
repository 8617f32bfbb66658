"""Backbone properties: cache == recompute, causality, span masks, rotary, bf16, training, config."""

from __future__ import annotations

import pytest
import torch

from unimm.model import (Backbone, BackboneConfig, and_padding, causal_mask, positions_1d,
                         positions_image, span_ids_from_ranges, span_mask)
from unimm.model.rotary import Rotary, apply_rotary
from unimm.utils.config import ConfigError, from_dict, to_dict

pytestmark = pytest.mark.usefixtures("plain_ops")    # the plain model (tests/test_fast.py:
#                                                        the fast paths against it)

TINY = dict(dim=32, n_layers=2, n_heads=2, max_seq_len=64)
CONFIGS = {
    "mha": BackboneConfig(**TINY),
    "gqa_qknorm": BackboneConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True,
                                 max_seq_len=64),
}


def make(cfg: BackboneConfig, seed: int = 0) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(cfg).eval()


def close(a, b, atol=1e-5):
    return torch.allclose(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_incremental_decoding_equals_full_recompute(name):
    cfg = CONFIGS[name]
    m = make(cfg)
    b, t, prefix = 2, 12, 5
    x = torch.randn(b, t, cfg.dim)  # two rows with different content
    pos = positions_1d(b, t)
    with torch.no_grad():
        full = m(x, pos)
        cache = m.new_cache(b, max_len=16)
        outs = [m(x[:, :prefix], pos[:, :prefix], cache=cache, start=0)]
        for i in range(prefix, t):
            outs.append(m(x[:, i:i + 1], pos[:, i:i + 1], cache=cache, start=i))
    assert cache.length == t
    assert close(torch.cat(outs, dim=1), full)


def test_chunked_decoding_with_explicit_causal_mask():
    cfg = CONFIGS["mha"]
    m = make(cfg)
    x, pos = torch.randn(1, 10, cfg.dim), positions_1d(1, 10)
    with torch.no_grad():
        full = m(x, pos, mask=causal_mask(10))
        cache = m.new_cache(1, max_len=10)
        a = m(x[:, :4], pos[:, :4], cache=cache)
        b = m(x[:, 4:], pos[:, 4:], mask=None, cache=cache, start=4)  # implicit bottom-right
        cache2 = m.new_cache(1, max_len=10)
        m(x[:, :4], pos[:, :4], cache=cache2)
        c = m(x[:, 4:], pos[:, 4:], mask=causal_mask(6, 10)[None], cache=cache2, start=4)
    assert close(torch.cat([a, b], 1), full) and close(c, b)


@pytest.mark.parametrize("explicit", [False, True])
def test_future_tokens_do_not_change_the_past(explicit):
    cfg = CONFIGS["mha"]
    m = make(cfg)
    x, pos = torch.randn(2, 8, cfg.dim), positions_1d(2, 8)
    y = x.clone()
    y[:, 5:] = torch.randn(2, 3, cfg.dim)
    mask = causal_mask(8) if explicit else None
    with torch.no_grad():
        hx, hy = m(x, pos, mask), m(y, pos, mask)
    assert close(hx[:, :5], hy[:, :5])
    assert not close(hx[:, 5:], hy[:, 5:], atol=1e-3)


def test_bidirectional_span():
    cfg = CONFIGS["mha"]
    m = make(cfg)
    t, span = 10, (3, 7)
    mask = span_mask(span_ids_from_ranges(t, [span]))  # (t, t)
    x, pos = torch.randn(1, t, cfg.dim), positions_1d(1, t)
    y = x.clone()
    y[:, 6] = torch.randn(cfg.dim)  # last token of the span
    with torch.no_grad():
        hx, hy = m(x, pos, mask), m(y, pos, mask)
    assert close(hx[:, :3], hy[:, :3])  # before the span: untouched
    diff = (hx - hy).abs().amax(-1)[0]  # (t,)
    assert (diff[3:6] > 1e-3).all()  # earlier span tokens see the later one
    assert (diff[7:] > 1e-3).all()


def test_prefix_reuse_with_rewritten_span():
    cfg = CONFIGS["gqa_qknorm"]
    m = make(cfg)
    p, n = 6, 5  # text prefix, image span rewritten by each continuation
    ids = span_ids_from_ranges(p + n, [(p, p + n)])
    full_mask = span_mask(ids)  # (p+n, p+n)
    prefix = torch.randn(2, p, cfg.dim)
    pos = torch.cat([positions_1d(2, p), positions_image(2, 1, n, start=p)], dim=1)
    with torch.no_grad():
        cache = m.new_cache(2, max_len=p + n)
        m(prefix, pos[:, :p], cache=cache)  # prefix computed once
        for seed in (1, 2):
            span = torch.randn(2, n, cfg.dim, generator=torch.Generator().manual_seed(seed))
            inc = m(span, pos[:, p:], span_mask(ids, t=n), cache=cache, start=p)
            full = m(torch.cat([prefix, span], 1), pos, full_mask)
            assert close(inc, full[:, p:])


def test_clone_and_select_rows_for_cfg_batches():
    cfg = CONFIGS["mha"]
    m = make(cfg)
    x, pos = torch.randn(2, 6, cfg.dim), positions_1d(2, 6)
    with torch.no_grad():
        cache = m.new_cache(2, max_len=8)
        m(x[:, :5], pos[:, :5], cache=cache)
        branch = cache.clone()
        pairs = cache.select_rows([0, 1, 0, 1])  # cond/uncond rows repeated
        a = m(x[:, 5:], pos[:, 5:], cache=cache, start=5)
        m(torch.randn(2, 1, cfg.dim), pos[:, 5:], cache=branch, start=5)  # must not leak
        b = m(x[:, 5:].repeat(2, 1, 1), pos[:, 5:].repeat(2, 1, 1), cache=pairs, start=5)
        full = m(x, pos)
    assert close(a, full[:, 5:]) and close(b, full[:, 5:].repeat(2, 1, 1))


def test_cache_misuse_raises():
    m = make(CONFIGS["mha"])
    cache = m.new_cache(1, max_len=4)
    x, pos = torch.randn(1, 2, 32), positions_1d(1, 2)
    with pytest.raises(ValueError, match="cache.length"):
        m(x, pos, cache=cache, start=1)  # slot 0 never written
    with pytest.raises(ValueError, match="overflows"):
        m(torch.randn(1, 5, 32), positions_1d(1, 5), cache=cache)
    with pytest.raises(ValueError, match="rows"):
        m(torch.randn(2, 2, 32), positions_1d(2, 2), cache=cache)
    with pytest.raises(ValueError, match="needs a cache"):
        m(x, pos, start=3)
    with pytest.raises(ValueError, match="mask must have shape"):
        m(x, pos, mask=causal_mask(3))
    with pytest.raises(ValueError, match="positions must lie"):
        m(x, pos + 64)


def _rope_1d_reference(x, t, theta):
    """Plain RoPE, rotate-half form: x (b, h, t, e), t (t,)."""
    e = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, e, 2, dtype=torch.float64) / e)
    ang = torch.outer(t.double(), inv_freq)
    cos, sin = torch.cat([ang.cos()] * 2, -1).float(), torch.cat([ang.sin()] * 2, -1).float()
    x1, x2 = x.chunk(2, -1)
    return x * cos + torch.cat([-x2, x1], -1) * sin


@pytest.mark.parametrize("layout", ["interleaved", "contiguous"])
def test_rotary_text_positions_equal_1d_rope(layout):
    rot = Rotary(head_dim=16, max_seq_len=64, theta=10000.0, sections=(4, 2, 2), layout=layout)
    x = torch.randn(1, 2, 20, 16)
    pos = positions_1d(1, 20, offset=7)
    ref = _rope_1d_reference(x, torch.arange(7, 27), 10000.0)
    assert close(apply_rotary(x, *rot(pos)), ref)


def test_rotary_2d_depends_only_on_position_differences():
    cfg = CONFIGS["mha"]
    m = make(cfg)
    with torch.no_grad():  # sharpen attention: at init it is nearly uniform, hiding positions
        for block in m.blocks:
            block.attn.qkv.weight.mul_(20)
    pos = torch.cat([positions_1d(1, 3), positions_image(1, 3, 3, start=3),
                     positions_1d(1, 2, offset=6)], dim=1)  # (1, 14, 3)
    x = torch.randn(1, pos.shape[1], cfg.dim)
    mask = span_mask(span_ids_from_ranges(14, [(3, 12)]))
    with torch.no_grad():
        base = m(x, pos, mask)
        shifted = m(x, pos + 9, mask)
        scrambled = pos.clone()
        scrambled[:, 3:12, 1:] = pos[:, 3:12, 1:].flip(1)  # same seq, different row/col
        other = m(x, scrambled, mask)
    assert close(base, shifted)
    assert not close(base[:, 3:12], other[:, 3:12], atol=1e-4)  # 2-D positions matter


def test_bf16_autocast_close_to_fp32():
    cfg = CONFIGS["gqa_qknorm"]
    m = make(cfg)
    x, pos = torch.randn(2, 10, cfg.dim), positions_1d(2, 10)
    with torch.no_grad():
        ref = m(x, pos)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(x, pos)
            cache = m.new_cache(2, max_len=10, dtype=torch.bfloat16)
            inc = torch.cat([m(x[:, :9], pos[:, :9], cache=cache),
                             m(x[:, 9:], pos[:, 9:], cache=cache, start=9)], 1)
    assert torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, rel
    assert (inc.float() - ref).norm() / ref.norm() < 0.05


def test_backward_and_overfit_one_batch():
    cfg = BackboneConfig(**TINY, dropout=0.1)
    m = make(cfg).train()
    x, pos = torch.randn(4, 8, cfg.dim), positions_1d(4, 8)
    target = torch.randn(4, 8, cfg.dim)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(m(x, pos), target)
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and losses[-1] < 0.8 * losses[0], losses


def test_masks():
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).bool())
    assert torch.equal(causal_mask(2, offset=2), causal_mask(2, 4))
    m = and_padding(causal_mask(3), torch.tensor([[False, False, True]]))  # left-padded row
    assert m[0].diagonal().all() and m.any(-1).all()
    assert not m[0, 2, :2].any()
    ids = torch.tensor([[0, 1, 1, 0], [0, 0, 2, 2]])
    sm = span_mask(ids)  # (2, 4, 4)
    assert sm[0, 1, 2] and not sm[0, 1, 3] and sm[1, 2, 3] and not sm[1, 1, 2]


def test_padded_rows_give_finite_outputs_and_ignore_padding():
    cfg = CONFIGS["mha"]
    m = make(cfg)
    x = torch.randn(1, 6, cfg.dim)
    padded = torch.cat([torch.randn(1, 2, cfg.dim), x], 1)  # two junk pad tokens on the left
    valid = torch.tensor([[False, False] + [True] * 6])
    pos = positions_1d(1, 8, offset=torch.tensor([-2])).clamp(min=0)
    with torch.no_grad():
        out = m(padded, pos, and_padding(causal_mask(8), valid))
        ref = m(x, positions_1d(1, 6))
    assert torch.isfinite(out).all()
    assert close(out[:, 2:], ref)


def test_config_validation_and_roundtrip():
    cases = {
        "divisible by n_heads": dict(dim=30, n_heads=4),
        "multiple of n_kv_heads": dict(dim=32, n_heads=4, n_kv_heads=3),
        "must be even": dict(dim=12, n_heads=4),
        "summing to head_dim // 2": dict(dim=32, n_heads=2, rope_sections=(4, 4, 4)),
        "dropout": dict(dropout=1.5),
    }
    for msg, kw in cases.items():
        with pytest.raises(ValueError, match=msg):
            BackboneConfig(**kw)
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(BackboneConfig, {"dims": 32})
    with pytest.raises(ConfigError, match="interleaved"):
        from_dict(BackboneConfig, {"rope_layout": "spiral"})
    cfg = from_dict(BackboneConfig, {"dim": 64, "n_heads": 4, "n_kv_heads": 2})
    assert cfg.mlp_hidden == 192 and cfg.rope_sections == (4, 2, 2)
    assert from_dict(BackboneConfig, to_dict(cfg)) == cfg


def test_param_count_and_flops():
    cfg = CONFIGS["gqa_qknorm"]
    m = make(cfg)
    d, e, f, L = cfg.dim, cfg.head_dim, cfg.mlp_hidden, cfg.n_layers
    per_layer = d * (cfg.n_heads + 2 * cfg.n_kv_heads) * e + d * d + 3 * d * f + 2 * d + 2 * e
    assert m.num_params() == L * per_layer + d
    assert m.flops_per_token(128) == 6 * m.num_params() + 12 * L * d * 128


@pytest.mark.parametrize("name", list(CONFIGS))
def test_last_token_only_equals_the_full_forward(name):
    """`last=True` (a prompt fill before decoding) gives the last token's hidden state of the
    full forward and writes the same keys/values into the cache; causal, masked and cached."""
    cfg = CONFIGS[name]
    m = make(cfg)
    b, t = 2, 7
    x, pos = torch.randn(b, t, cfg.dim), positions_1d(b, t)
    span = span_mask(span_ids_from_ranges(t, [(2, 5)]))                 # (t, t) bidirectional
    with torch.no_grad():
        for mask in (None, span):
            full = m(x, pos, mask)
            assert close(m(x, pos, mask, last=True), full[:, -1:])
            c1, c2 = m.new_cache(b, t + 3), m.new_cache(b, t + 3)
            m(x, pos, mask, cache=c1)
            got = m(x, pos, mask, cache=c2, last=True)
            assert got.shape == (b, 1, cfg.dim) and close(got, full[:, -1:])
            assert close(c1.k, c2.k) and close(c1.v, c2.v) and c2.length == t


def test_block_submodules_are_called_as_modules_so_hooks_fire():
    """Blocks, norms, attention and MLP are called as modules (hooks fire on each), once per
    forward, cached or not."""
    cfg = CONFIGS["gqa_qknorm"]
    m = make(cfg)
    seen = []
    for name, mod in m.named_modules():
        if name:
            mod.register_forward_hook(lambda mod, a, out, name=name: seen.append(name))
    x, pos = torch.randn(2, 5, cfg.dim), positions_1d(2, 5)
    with torch.no_grad():
        m(x, pos, cache=m.new_cache(2, 8), last=True)
    names = {n for n, mod in m.named_modules() if n and not isinstance(
        mod, (torch.nn.ModuleList, torch.nn.Linear, torch.nn.Dropout))}
    assert set(seen) == names and len(seen) == len(names)


def test_cache_views_copies_and_the_sync_seam():
    """`rows` is a view (writes land in the cache), `copy_slots` copies every layer's slots
    between rows, and every method that touches k, v first calls `sync` (where a speed path
    writes back slots it holds elsewhere)."""
    from unimm.model.cache import KVCache
    c = KVCache.empty(2, 3, 1, 6, 4)
    synced = []
    c.sync = lambda cache: synced.append(cache)
    view = c.rows(1, 3)
    view.update(0, 0, torch.ones(2, 1, 2, 4), torch.full((2, 1, 2, 4), 2.0))
    assert c.k[0, 1:, :, :2].eq(1).all() and c.k[0, 0].eq(0).all() and view.sync is None
    c.copy_slots(1, 0, 0, 3, 2)
    assert torch.equal(c.k[:, 0, :, 3:5], c.k[:, 1, :, :2])
    assert torch.equal(c.v[:, 0, :, 3:5], c.v[:, 1, :, :2])
    c.length = 5
    c.clone(), c.select_rows([0, 0]), c.update(1, 5, torch.zeros(3, 1, 1, 4),
                                               torch.zeros(3, 1, 1, 4))
    assert len(synced) == 5 and all(s is c for s in synced)


def test_the_core_model_files_hold_no_cpu_speed_paths():
    """The plain model reads as a transformer: the CPU fast paths (oneDNN's ops, weight version
    counters, compiler checks, planted attributes, buffer pools) live in unimm.fast, which
    these files do not import."""
    import re
    from pathlib import Path

    import unimm.model
    root = Path(unimm.model.__file__).parent
    for name in ("layers.py", "backbone.py", "cache.py", "unified.py"):
        text = (root / name).read_text()
        for marker in ("mkldnn", "_version", "is_compiling", "__dict__", "BufferPool"):
            assert marker not in text, f"{name} holds {marker!r}"
        assert not re.search(r"^\s*(from|import) unimm\.fast|^\s*from \.\.fast", text, re.M), name

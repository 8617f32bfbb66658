"""The fast package (unimm.fast) against the plain model, path by path: the packed linears
equal F.linear; blocked / explicit attention equal SDPA in values and gradients; the
written-out decoding step and prompt fill equal the eager ones (plain, grouped-query and
QK-norm attention, Janus-style code MLPs); the native kernel equals the written-out attention;
compiled decoding gives the same greedy images and answers as eager decoding; the cache window
and the buffer pools keep the caches' contents. Tiny models, tokens only. Skipped as a whole
when the fast package is off (UNIMM_FAST=0) or missing."""

import contextlib
import dataclasses
import random
import shutil

import pytest
import torch

from unimm.model import Backbone, ops, positions_1d
from unimm.model.backbone import BackboneConfig

if ops.fast is None:
    pytest.skip("unimm.fast is off (UNIMM_FAST=0) or not installed: its paths are not in use",
                allow_module_level=True)

from test_decode import V, left_padded, model, prefilled, prompts  # noqa: E402
from unimm.fast import kernels  # noqa: E402
from unimm.fast.steps import static_fill, static_step, step_attention, step_bias  # noqa: E402
from unimm.paradigms.ar import Autoregressive  # noqa: E402
from unimm.paradigms.base import Turn  # noqa: E402
from unimm.paradigms.sampling import GREEDY  # noqa: E402

GQA_QKNORM = BackboneConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, qk_norm=True,
                            max_seq_len=64)
COMPILER = shutil.which("g++") or shutil.which("c++")


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=pytest.mark.slow)])
@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"qk_norm": True},
                                {"code_mlp": 24}])
def test_static_step_equals_eager_step(kw, native):
    """The written-out step (its attention written out, or the native CPU kernel's) gives the
    eager step's logits and keys / values."""
    if native and not COMPILER:
        pytest.skip("the native kernel needs a C++ compiler")
    m = model(**kw)
    lo, hi = V.code_start, V.size
    with torch.no_grad():
        cache, valid, T = prefilled(m)
        twin = cache.clone()
        slots = m.decode_slots(valid, cache)
        for k in range(4):
            tok = torch.tensor([[lo + 3 * k], [lo + 1], [5]])
            pos = torch.tensor([[[T + k, k, 1]]] * 3)
            want = m.decode_logits(tok, pos, slots, cache, T + k, lo, hi)        # eager (SDPA)
            idx = torch.tensor([T + k])
            got, nk, nv = static_step(m, tok, pos, step_bias(slots, T + k, torch.float32),
                                      twin.k, twin.v, lo, hi, native=native)
            twin.k.index_copy_(3, idx, nk)
            twin.v.index_copy_(3, idx, nv)
            twin.length = T + k + 1
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(twin.k[..., :T + k + 1, :], cache.k[..., :T + k + 1, :])


@pytest.mark.slow
@pytest.mark.skipif(not COMPILER, reason="the native kernel needs a C++ compiler")
@pytest.mark.parametrize("e", [8, 16, 24, 32, 64])
def test_native_decode_attention_equals_the_written_out_attention(e):
    """unimm::decode_attention (fast/csrc) against step_attention: head sizes below, at and
    above the vector width and between its multiples, grouped queries, masked slots at both
    ends, a row whose cached slots are all masked (only the new token), inputs that are not
    contiguous; clear errors for other dtypes and mismatched shapes."""
    op = kernels.decode_attention()
    assert op is not None, kernels._state.get("failed")
    torch.manual_seed(e)
    r, g, n, m = 3, 2, 3, 21
    q = torch.randn(r, g, n, e) * 2
    kc, vc = torch.randn(2, r, g, m, e).unbind(0)
    k, v = torch.randn(2, r, g, 1, e).unbind(0)
    slots = torch.ones(r, m, dtype=torch.bool)
    slots[0, :4] = False                        # left padding
    slots[2] = False                            # nothing cached to attend to
    bias = step_bias(slots, 17, torch.float32)  # and nothing from slot 17 on
    want = step_attention(q, kc, vc, bias, k, v, e ** -0.5)
    got = op(q, kc, vc, bias, k, v, e ** -0.5)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(got[2], v[2].expand(g, n, e), atol=1e-6, rtol=1e-6)
    wide = torch.randn(r, g, m, 2 * e)          # keys read through a strided view
    torch.testing.assert_close(op(q, wide[..., :e], vc, bias, k, v, 0.3),
                               step_attention(q, wide[..., :e], vc, bias, k, v, 0.3),
                               atol=2e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="float32 CPU tensors only"):
        op(q.double(), kc, vc, bias, k, v, 0.3)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        op(q, kc[:, :, :5], vc, bias, k, v, 0.3)


@pytest.mark.slow
def test_steps_write_the_attention_out_where_the_native_kernel_does_not_build(monkeypatch):
    """No compiler (or UNIMM_NATIVE_KERNELS=0): one warning that says why, then the step's
    attention is the written-out one, with the same results."""
    def no_compiler():
        raise RuntimeError("Error building extension: c++ not found")
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setattr(kernels, "_build", no_compiler)
    with pytest.warns(UserWarning, match="native decode attention unavailable.*c.. not found"):
        assert kernels.decode_attention() is None
    assert kernels.decode_attention() is None                # once: no second warning, no build
    m = model()
    with torch.no_grad():
        cache, valid, T = prefilled(m)
        args = (m, torch.tensor([[V.code_start]] * 3), torch.tensor([[[T, 0, 1]]] * 3),
                step_bias(m.decode_slots(valid, cache), T, torch.float32), cache.k, cache.v,
                V.code_start, V.size)
        for want, got in zip(static_step(*args), static_step(*args, native=True)):
            assert torch.equal(want, got)
    monkeypatch.setattr(kernels, "_state", {})
    monkeypatch.setenv("UNIMM_NATIVE_KERNELS", "0")
    assert kernels.decode_attention() is None


@pytest.mark.skipif(not COMPILER, reason="the native kernel needs a C++ compiler")
@pytest.mark.slow
def test_the_native_kernel_loads_from_the_cache_past_a_killed_builds_lock(tmp_path):
    """A fresh process loads the kernel from $UNIMM_CACHE_DIR/kernels/NAME (here a copy of this
    session's build); a lock left there by a killed build (torch's builder would wait on it
    forever, even for a library that needs no rebuilding) is removed when it is stale."""
    import os
    import subprocess
    import sys
    import time
    assert kernels.decode_attention() is not None, kernels._state.get("failed")
    build = tmp_path / "kernels" / kernels.library_name()
    shutil.copytree(kernels.cache_root() / "kernels" / kernels.library_name(), build)
    (so,) = build.glob("*.so")
    built = so.stat().st_mtime_ns
    (build / "lock").touch()
    old = time.time() - kernels.STALE_LOCK_S - 60
    os.utime(build / "lock", (old, old))
    code = ("import torch, warnings; warnings.simplefilter('error');"
            "from unimm.fast import kernels; op = kernels.decode_attention();"
            "q = torch.ones(1, 1, 1, 8); kv = torch.ones(1, 1, 3, 8);"
            "print(op(q, kv, kv, torch.zeros(1, 3), q, q, 0.5).sum().item())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "UNIMM_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "8.0"
    assert so.stat().st_mtime_ns == built and not (build / "lock").exists()   # not rebuilt


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 2}, {"qk_norm": True},
                                {"code_mlp": 24}])
def test_static_fill_equals_the_eager_prompt_fill(kw):
    """The prompt fill written for the compiler (static_fill) gives the eager fill's last hidden
    state and every token's keys / values."""
    m = model(**kw)
    batch, mask = left_padded()
    tokens, pos = batch.tokens, batch.pos
    T = tokens.shape[1]
    with torch.no_grad():
        cache = m.new_cache(3, T + 4)
        want = m.hidden(tokens, pos, mask, cache=cache, last=True)
        got, k, v = static_fill(m, m.embed_tokens(tokens, pos), pos, mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, cache.k[..., :T, :], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v, cache.v[..., :T, :], atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_compiled_decoding_under_autocast_runs_a_bf16_library():
    """eval.precision = "bf16" with compiled decoding: the step library is traced from a copy
    of the weights in bf16 (the model keeps its float32 weights) and computes what that copy
    computes eagerly, up to bf16 rounding."""
    from unimm.fast.decode import DecodeStep
    m = model(code_mlp=24)
    lo, hi = V.code_start, V.size
    step = DecodeStep(m)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        cache, valid, T = prefilled(m, n_rows=10)      # 10 rows: the oneDNN library
        twin = cache.clone()
        slots = m.decode_slots(valid, cache)
        tok = torch.arange(10)[:, None] + lo
        pos = torch.tensor([[[T, 0, 0]]] * 10)
        got = step(tok, pos, slots, cache, T, lo, hi)
        assert [k[4] for k in step._aoti] == [torch.bfloat16] and step.failed is None
        want, nk, nv = static_step(step._lowered(torch.bfloat16), tok, pos,
                                   step_bias(slots, T, torch.bfloat16), twin.k, twin.v, lo, hi)
    exact, _, _ = static_step(m, tok, pos, step_bias(slots, T, torch.float32), twin.k.float(),
                              twin.v.float(), lo, hi)
    assert got.dtype == torch.float32 and cache.k.dtype == torch.bfloat16
    scale = want.abs().max()
    assert (got - want).abs().max() < 0.03 * scale                # bf16 rounding, fused
    assert (got - exact).abs().max() < 0.1 * scale                # the same model
    torch.testing.assert_close(cache.k[..., T, :].float(), nk[..., 0, :].float(), atol=0.05,
                               rtol=0.05)
    assert all(p.dtype == torch.float32 for p in m.parameters())


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.parametrize("code_mlp,backend", [(24, "aoti"), (0, "inductor")])
@pytest.mark.slow
def test_compiled_decoding_gives_the_same_greedy_outputs(code_mlp, backend):
    m = model(code_mlp=code_mlp)
    par = Autoregressive(V)
    ts = prompts(2)
    questions = [Turn("vqa", [1, 2, 3], [random.Random(i).randrange(V.n_codes)
                                         for _ in range(V.n_image)]) for i in range(2)]
    with torch.inference_mode():
        want_img = par.generate_images(m, ts, 2.0, GREEDY)
        want_one = par.generate_images(m, ts[:1], 1.0, GREEDY)            # a 1-row batch
        want_txt = par.generate_text(m, questions, 6, GREEDY)
        m.compile_decode(backend=backend)
        # capacities in steps of 64 for torch.compile; AOTInductor steps take any capacity
        assert m.new_cache(2, 70).max_len == (128 if backend == "inductor" else 70)
        got_img = par.generate_images(m, ts, 2.0, GREEDY)
        got_one = par.generate_images(m, ts[:1], 1.0, GREEDY)
        got_txt = par.generate_text(m, questions, 6, GREEDY)
        assert m.decoder.failed is None      # it really ran compiled
        if backend == "aoti":       # rows and slots are dynamic: one library per slice
            assert len(m.decoder._aoti) == 2
            # a cache big enough for several windows: one library, equal outputs
            assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want_img)
            assert len(m.decoder._aoti) == 2
            m.compile_decode(False)
            many = prompts(5, seed=1)                     # 10 guided rows: the large library
            want_many = par.generate_images(m, many, 2.0, GREEDY)
            m.compile_decode(backend=backend)
            assert torch.equal(par.generate_images(m, many, 2.0, GREEDY), want_many)
            assert {k[0] for k in m.decoder._aoti} == {False}
            assert kernels.decode_attention() is not None    # with the native attention
        with pytest.raises(ValueError, match="filled slots"):
            cache = m.new_cache(1, 8)
            m.decode_logits(torch.tensor([[1]]), torch.zeros(1, 1, 3, dtype=torch.long),
                            torch.ones(1, cache.max_len, dtype=torch.bool), cache, 3, 0, 8)
        with pytest.raises(ValueError, match="do not fit a cache of 2 rows"):
            cache = m.new_cache(2, 8)
            cache.length = 1
            m.decode_logits(torch.tensor([[1]]), torch.zeros(1, 1, 3, dtype=torch.long),
                            torch.ones(1, cache.max_len, dtype=torch.bool), cache, 1, 0, 8)
        m.compile_decode(False)
        assert m.new_cache(2, 70).max_len == 70
        with pytest.raises(ValueError, match="unknown decoding compiler 'tvm'"):
            m.compile_decode(backend="tvm")
    assert torch.equal(got_img, want_img) and torch.equal(got_one, want_one)
    assert got_txt == want_txt


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_compiled_prompt_fills_write_the_eager_cache(monkeypatch):
    """With compiled decoding, prompt fills (from slot 0, last token out) run through one
    AOTInductor library for any rows x tokens, masked or causal, and leave the cache the eager
    fill leaves; other forwards (a later start, every token out, gradients, bad positions)
    stay eager or fail as they did. (A short context: the library is traced at fewer tokens.)"""
    m = model(n_kv_heads=2, max_seq_len=24)
    batch, mask = left_padded()
    tokens, pos = batch.tokens, batch.pos
    T = tokens.shape[1]
    with torch.inference_mode():
        want, cache_a = [], []
        for toks, p, mk in ((tokens, pos, mask), (tokens[:1, -3:], pos[:1, -3:], None)):
            c = m.new_cache(toks.shape[0], T + 4)
            want.append(m.hidden(toks, p, mk, cache=c, last=True))
            cache_a.append(c)
        m.compile_decode()
        step = m.decoder
        for (toks, p, mk), w, a in zip(((tokens, pos, mask), (tokens[:1, -3:], pos[:1, -3:],
                                                               None)), want, cache_a):
            b = m.new_cache(toks.shape[0], T + 4)
            got = m.hidden(toks, p, mk, cache=b, last=True)
            torch.testing.assert_close(got, w, atol=1e-5, rtol=1e-5)
            assert b.length == a.length == toks.shape[1]
            torch.testing.assert_close(b.k, a.k, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(b.v, a.v, atol=1e-5, rtol=1e-5)
        assert len(step._fills) == 1 and step.fill_failed is None
        calls = []
        monkeypatch.setattr(step, "fill", lambda *a: calls.append(1))
        m.hidden(tokens, pos, mask, cache=m.new_cache(3, T + 4))          # every token out
        c = m.new_cache(3, T + 4)
        c.length = 1
        m.hidden(tokens[:, 1:], pos[:, 1:], mask[..., 1:, :], cache=c, start=1, last=True)
        assert calls == []
        with pytest.raises(ValueError, match="positions must lie in"):
            m.hidden(tokens, pos + 30, mask, cache=m.new_cache(3, T + 4), last=True)
    with torch.enable_grad():
        m.hidden(tokens, pos, mask, cache=m.new_cache(3, T + 4), last=True)
    assert calls == []


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_without_aotinductor_decoding_falls_back_to_torch_compile(monkeypatch):
    def unavailable(*a, **k):
        raise RuntimeError("no AOTInductor in this torch")
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", unavailable)
    monkeypatch.setenv("UNIMM_CACHE_DIR", "")           # nothing from disk either
    m = model()
    par = Autoregressive(V)
    ts = prompts(2)
    with torch.inference_mode(), pytest.warns(UserWarning, match="using torch.compile"), \
            pytest.warns(UserWarning, match="compiled prompt fills unavailable, filling eagerly"):
        want = par.generate_images(m, ts, 2.0, GREEDY)
        m.compile_decode()
        got = par.generate_images(m, ts, 2.0, GREEDY)
    step = m.decoder
    assert "no AOTInductor" in step.aoti_failed and step.backend == "inductor"
    assert "no AOTInductor" in step.fill_failed                 # its fills ran eagerly too
    assert step.failed is None and torch.equal(got, want)


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_aoti_steps_read_a_growing_window_and_see_eager_writes():
    """AOTInductor steps read a window of the cache's first slots that grows every WINDOW
    steps; each step equals the eager one across window boundaries, and an eager write into
    the cache (here: the last slot rewritten) reaches the next compiled step."""
    from unimm.fast.window import WINDOW
    m = model()
    lo, hi = V.code_start, V.size
    with torch.inference_mode():
        a, valid, T = prefilled(m)
        a = type(a)(torch.cat([a.k, a.k.new_zeros(*a.k.shape[:3], 72, a.k.shape[4])], 3),
                    torch.cat([a.v, a.v.new_zeros(*a.v.shape[:3], 72, a.v.shape[4])], 3), T)
        b = a.clone()
        slots = m.decode_slots(valid, a)
        twin = model()
        twin.compile_decode()
        widths = set()
        for k in range(2 * WINDOW + 4):
            tok = torch.tensor([[lo + k % 7], [lo + 1], [5 + k % 3]])
            pos = torch.tensor([[[T + k, k % 2, k % 3]]] * 3)
            want = m.decode_logits(tok, pos, slots, a, T + k, lo, hi)
            got = twin.decode_logits(tok, pos, slots, b, T + k, lo, hi)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
            widths.add(b.sync.k.shape[3])
            if k == WINDOW + 2:             # rewrite the last slot eagerly in both caches
                for c, mm in ((a, m), (b, twin)):
                    c.length = T + k
                    mm.hidden(tok + 1, pos, slots[:, None, None, :T + k + 1], cache=c,
                              start=T + k)
                assert b.sync.k is None     # the write dropped the window
        assert twin.decoder.failed is None and len(widths) >= 3
        assert len(twin.decoder._aoti) == 1
        assert max(widths) <= a.max_len
        assert b.sync.pending is not None           # new slots live in the window only ...
        n = b.length
        b.flush()                                   # ... until flushed into k, v
        torch.testing.assert_close(b.k[..., :n, :], a.k[..., :n, :], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b.clone().v[..., :n, :], a.v[..., :n, :], atol=1e-4,
                                   rtol=1e-4)
        # once the next window would reach the capacity, the window is the cache itself:
        # steps write straight into k, v (nothing pending) and still equal eager ones
        for k in range(n - T, a.max_len - T):
            tok = torch.tensor([[lo + k % 5], [lo + 2], [4 + k % 3]])
            pos = torch.tensor([[[T + k, k % 3, k % 2]]] * 3)
            want = m.decode_logits(tok, pos, slots, a, T + k, lo, hi)
            got = twin.decode_logits(tok, pos, slots, b, T + k, lo, hi)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert b.sync.k is b.k and b.sync.pending is None and b.length == a.max_len
        torch.testing.assert_close(b.k, a.k, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_sampler_caches_hand_their_memory_to_the_next_call():
    """The samplers' caches (new_cache(reuse=True)) return their memory to the backbone's pool
    when dropped; the next call reuses it (zeroed) and gives the same outputs, eager and
    compiled, inside and outside inference mode; a copy of the model gets an empty pool."""
    import copy

    from unimm.fast.pool import BufferPool
    m = model()
    par = Autoregressive(V)
    ts = prompts(3)
    with torch.no_grad():
        want = par.generate_images(m, ts, 2.0, GREEDY)
    pool = m.backbone.pool
    held = pool.nbytes()
    assert held > 0                                    # the cache went back
    with torch.no_grad():
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
    assert pool.nbytes() == held                       # reused, not grown
    with torch.inference_mode():                       # inference tensors: a pool of their own
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
        m.compile_decode()
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
    with torch.no_grad():
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
    assert copy.deepcopy(m).backbone.pool.nbytes() == 0
    small = BufferPool(max_bytes=1000)
    small.give([torch.ones(200), torch.ones(200)])     # 800 bytes each: one is kept
    assert small.nbytes() == 800
    assert small.take(150, torch.float32, "cpu").abs().sum() == 0    # zeroed on reuse
    assert m.new_cache(2, 8).pool is None              # a caller's own cache: plain memory


@pytest.mark.skipif(not COMPILER, reason="torch.compile on CPU needs a C++ compiler")
@pytest.mark.slow
def test_compiled_libraries_are_kept_on_disk_per_weights(tmp_path, monkeypatch):
    """A second process (here: a fresh DecodeStep) loads the libraries (the step's and the
    prompt fill's) from disk instead of compiling them again; other weights are compiled
    anew."""
    monkeypatch.setenv("UNIMM_CACHE_DIR", str(tmp_path))
    m = model(seed=3)
    par = Autoregressive(V)
    ts = prompts(2)
    real, calls = torch._inductor.aoti_compile_and_package, []
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.inference_mode():
        want = par.generate_images(m, ts, 2.0, GREEDY)
        m.compile_decode()
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
        assert len(m.decoder._fills) == 1    # the prompt fill's library too
        assert calls == [1, 1] and len(list((tmp_path / "decode").glob("*.pt2"))) == 2
        m.compile_decode()                             # a fresh step: from disk
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want)
        assert calls == [1, 1]
        m.head.weight.add_(0.5)                        # other weights: compiled again
        m.compile_decode(False)
        want2 = par.generate_images(m, ts, 2.0, GREEDY)
        m.compile_decode()
        assert torch.equal(par.generate_images(m, ts, 2.0, GREEDY), want2)
        assert calls == [1] * 4 and len(list((tmp_path / "decode").glob("*.pt2"))) == 4
        assert not list((tmp_path / "decode").glob("*.tmp"))


def test_loaded_step_libraries_are_called_through_their_loader():
    """A loaded package is called through its loader's boxed_run on the step's tensors (no
    per-call spec parsing), returning a tuple; without one, the package itself."""
    from types import SimpleNamespace

    from unimm.fast.decode import _direct
    seen = []
    pkg = SimpleNamespace(loader=SimpleNamespace(
        boxed_run=lambda xs: seen.append(len(xs)) or [x * 2 for x in xs]))
    out = _direct(pkg)(torch.ones(1), torch.zeros(2))
    assert isinstance(out, tuple) and seen == [2] and torch.equal(out[0], torch.full((1,), 2.0))
    plain = SimpleNamespace()
    assert _direct(plain) is plain


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
    from unimm.fast import attention, linear, pool
    fast = (linear.linear, linear.swiglu, attention.attention)
    assert (ops.linear, ops.swiglu, ops.attention) == fast and ops.new_pool is pool.BufferPool
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

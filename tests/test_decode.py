"""Decoding with the plain model (no unimm.fast paths: the plain ops table): bf16 caches hold
the keys and values exactly, compiled decoding without the fast package warns and decodes
eagerly, and the shipped model gives the same greedy outputs with the fast package off as on,
without importing it. The tiny-model helpers here serve test_fast.py too."""

import importlib.util
import json
import os
import random
import subprocess
import sys

import pytest
import torch

from unimm.model import ops
from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.paradigms.base import Turn
from unimm.paradigms.sequence import Vocab, collate

V = Vocab(n_text=40, n_codes=16, grid=(2, 3))

pytestmark = pytest.mark.usefixtures("plain_ops")


def model(seed=0, code_mlp=0, **kw):
    torch.manual_seed(seed)
    cfg = BackboneConfig(**{"dim": 32, "n_layers": 2, "n_heads": 4, "max_seq_len": 128, **kw})
    m = TokenModel(V.size, cfg, image_grid=V.grid, code_start=V.code_start, code_mlp=code_mlp)
    with torch.no_grad():           # larger weights: logits that depend on the context
        for p in m.parameters():
            if p.dim() >= 2:
                p.mul_(4)
    return m.eval()


def prompts(n, seed=0):
    r = random.Random(seed)
    return [Turn("t2i", [r.randrange(V.n_text) for _ in range(r.randint(1, 6))])
            for _ in range(n)]


def left_padded(n_rows=3):
    """A left-padded prompt batch and its prefix mask (b, 1, T, T)."""
    from unimm.paradigms.base import format_turn
    batch = collate([format_turn(V, t, with_target=False) for t in prompts(n_rows)], V.pad,
                    left=True)
    T = batch.tokens.shape[1]
    mask = batch.valid[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()
    return batch, mask | torch.eye(T, dtype=torch.bool)


def prefilled(m, n_rows=3, dtype=None):
    """A left-padded prefix written into a cache -> (cache, valid, T)."""
    batch, mask = left_padded(n_rows)
    T = batch.tokens.shape[1]
    cache = m.new_cache(n_rows, T + 8, dtype=dtype)
    m.hidden(batch.tokens, batch.pos, mask, cache=cache)
    return cache, batch.valid, T


def test_autocast_caches_hold_the_keys_and_values_exactly():
    """Under bf16 autocast keys and values are computed in bf16, so the cache is made in bf16
    (half the memory and the bytes a step reads) and holds exactly what a float32 one would."""
    m = model(qk_norm=True)
    lo, hi = V.code_start, V.size
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low, valid, T = prefilled(m)
        full, _, _ = prefilled(m, dtype=torch.float32)
        assert low.k.dtype == torch.bfloat16 and full.k.dtype == torch.float32
        assert torch.equal(low.k.float(), full.k) and torch.equal(low.v.float(), full.v)
        tok, pos = torch.tensor([[lo], [lo + 1], [5]]), torch.tensor([[[T, 0, 0]]] * 3)
        a = m.decode_logits(tok, pos, m.decode_slots(valid, low), low, T, lo, hi)
        b = m.decode_logits(tok, pos, m.decode_slots(valid, full), full, T, lo, hi)
        assert torch.equal(a, b) and torch.equal(low.k.float(), full.k)
    assert m.new_cache(1, 4).k.dtype == torch.float32             # autocast off again


def test_compiled_decoding_without_the_fast_package_warns_and_decodes_eagerly(monkeypatch):
    """`compile_decode` needs unimm.fast: without it one warning that says so, and decoding
    stays eager (no decoder, no filler), with the same outputs."""
    from unimm.paradigms.ar import Autoregressive
    from unimm.paradigms.sampling import GREEDY
    monkeypatch.setattr(ops, "fast", None)
    monkeypatch.setenv("UNIMM_FAST", "0")
    m, par = model(), Autoregressive(V)
    with torch.no_grad():
        want = par.generate_images(m, prompts(2), 2.0, GREEDY)
        with pytest.warns(UserWarning, match=r"compiled decoding needs the fast package "
                                             r"\(UNIMM_FAST=0\); running eagerly"):
            m.compile_decode()
        assert m.decoder is None and m.backbone.filler is None
        assert torch.equal(par.generate_images(m, prompts(2), 2.0, GREEDY), want)


_GREEDY_SET = """
import hashlib, json, sys, torch
torch.set_num_threads(1)
from unimm.data.splits import ShapesWorld
from unimm.pipeline import Pipeline
pipe = Pipeline.load()
w = ShapesWorld("test")
vqa = [w.vqa_example(i) for i in range(6)]
out = {"answers": pipe.answer([e.image for e in vqa], [e.text for e in vqa]),
       "caption": pipe.caption(w.image(0)),
       "images": [hashlib.sha256(im.tobytes()).hexdigest()[:16] for im in pipe.draw(
           [w.t2i_example(i, geneval=False).text for i in range(2)], guidance=3.0)],
       "fast_modules": sorted(k for k in sys.modules if k.startswith("unimm.fast"))}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_the_shipped_model_answers_the_same_with_the_fast_package_off():
    """UNIMM_FAST=0 in a fresh process: the shipped model's greedy answers, a caption and
    guided images equal those with the fast package on (batch-6 answer fills run its packed
    projections), and nothing of unimm.fast is imported."""
    runs = {}
    for fast in ("1", "0"):
        r = subprocess.run([sys.executable, "-c", _GREEDY_SET], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "UNIMM_FAST": fast})
        assert r.returncode == 0, r.stderr[-2000:]
        runs[fast] = json.loads(r.stdout.strip().splitlines()[-1])
    on, off = runs["1"], runs["0"]
    assert off.pop("fast_modules") == []
    there = importlib.util.find_spec("unimm.fast") is not None
    assert bool(on.pop("fast_modules")) == there      # installed with UNIMM_FAST=1 if there
    assert off == on

"""Image tokenizers (PatchVQ, ConvVQ, the EMA quantiser) and the byte-level BPE text tokenizer.

Tiny configs so the file runs in seconds on one thread."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from unimm.data.splits import ShapesWorld
from unimm.tokenizers import (ImageTokenizer, ImageTokenizerConfig, PatchVQ, TokenizerFileError,
                              build_image_tokenizer, load_image_tokenizer)
from unimm.tokenizers.text import TextTokenizer, TextTokenizerError
from unimm.runs import TokenizerTrainConfig
from unimm.train.tokenizer import train_image_tokenizer
from unimm.tokenizers.vq import VectorQuantizer, usage_stats
from unimm.utils.config import ConfigError, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ImageTokenizerConfig(codebook_size=64, latent_dim=8, hidden=32, depth=1)


def _images(n: int, start: int = 0, split: str = "train") -> np.ndarray:
    w = ShapesWorld(split)
    return np.stack([w.image(i) for i in range(start, start + n)])


def _trained_tiny(kind: str = "patch_vq", steps: int = 5) -> ImageTokenizer:
    torch.manual_seed(0)
    cfg = ImageTokenizerConfig(**{**TINY.__dict__, "kind": kind})
    tok = build_image_tokenizer(cfg)
    x = tok.to_pixels(_images(16))
    tok.quantizer.init_kmeanspp(tok.latents(x).reshape(-1, cfg.latent_dim).detach(),
                                torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    tok.train()
    for _ in range(steps):
        loss = tok.losses(x)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok.eval()


@pytest.fixture(scope="module")
def tiny() -> ImageTokenizer:
    return _trained_tiny()


# -- image tokenizer: interface ------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["patch_vq", "conv_vq"])
def test_shapes_dtypes_and_range(kind):
    tok = _trained_tiny(kind, steps=1)
    imgs = _images(5)
    codes = tok.encode(imgs)
    assert tok.grid == (8, 8) and tok.image_size == 32 and tok.codebook_size == 64
    assert codes.shape == (5, 8, 8) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.codebook_size
    out = tok.decode(codes)
    assert isinstance(out, np.ndarray) and out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
    z = tok.encode_latents(imgs)
    assert z.shape == (5, 8, 8, tok.latent_dim) and z.dtype == torch.float32
    # Snapping latents to the codebook and decoding equals decoding the codes.
    np.testing.assert_array_equal(tok.decode_latents(z), out)
    assert tok.decode_latents(z, quantize=False).shape == (5, 32, 32, 3)


def test_encode_is_deterministic_and_accepts_float(tiny):
    imgs = _images(6)
    a, b = tiny.encode(imgs), tiny.encode(imgs)
    assert torch.equal(a, b)
    c = tiny.encode(torch.from_numpy(imgs).float() / 255.0)
    assert (a == c).float().mean() > 0.99           # same pixels; float rounding may flip ties


def test_bad_inputs_raise_clear_errors(tiny):
    with pytest.raises(ValueError, match=r"\(n, 32, 32, 3\)"):
        tiny.encode(np.zeros((2, 3, 32, 32), np.uint8))                   # channels first
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tiny.encode(torch.full((1, 32, 32, 3), 2.0))
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        tiny.decode(torch.full((1, 8, 8), 64))
    with pytest.raises(ValueError, match="shape"):
        tiny.decode(torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integers"):
        tiny.decode(torch.zeros(1, 8, 8))


# -- image tokenizer: training -------------------------------------------------------------------

def test_overfit_one_batch_lowers_reconstruction_loss():
    torch.manual_seed(0)
    tok = build_image_tokenizer(TINY)
    x = tok.to_pixels(_images(16))
    tok.quantizer.init_kmeanspp(tok.latents(x).reshape(-1, 8).detach(),
                                torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    tok.train()
    losses = []
    for _ in range(60):
        lo = tok.losses(x)
        opt.zero_grad()
        lo["loss"].backward()
        opt.step()
        losses.append(lo["recon"].item())
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])


def test_background_subsampling_keeps_foreground():
    tok = build_image_tokenizer(TINY).train()
    x = tok.to_pixels(_images(8))
    full = tok.losses(x)["codes"].numel()
    sub = tok.losses(x, background_keep=0.0)["codes"].numel()
    n_fg = int((x.reshape(8, 8, 4, 8, 4, 3).amax((2, 4, 5)) > 0).sum())
    assert full == 8 * 64 and sub == n_fg < full


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 2, decay=0.9).train()
    g = torch.Generator().manual_seed(0)
    live = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    with torch.no_grad():
        vq.codebook.copy_(torch.cat([live, torch.full((4, 2), 100.0)]))   # codes 4..7 dead
        vq.ema_sum.copy_(vq.codebook)
    vq.initialized.fill_(True)
    # Data: the 4 live corners plus a far cluster at (5, 5) that no live code covers.
    far = torch.tensor([5.0, 5.0]) + 0.01 * torch.randn(64, 2, generator=g)
    z = torch.cat([live.repeat(16, 1), far])
    _, codes, _, err = vq(z)
    assert set(codes.tolist()) <= {0, 1, 2, 3}
    assert vq.dead_codes().tolist() == [4, 5, 6, 7]
    n = vq.restart_dead(z, err, generator=g)
    assert n == 4
    moved = vq.codebook[4:]
    assert (moved - torch.tensor([5.0, 5.0])).abs().max() < 0.1           # onto the far cluster
    _, codes2, _, err2 = vq(z)
    assert set(codes2[64:].tolist()) <= {4, 5, 6, 7}                      # revived codes used
    assert err2[64:].mean() < 0.01 * err[64:].mean()


def test_usage_stats():
    s = usage_stats(torch.tensor([0, 1, 2, 3]), 8)
    assert s["usage"] == 0.5 and s["distinct_codes"] == 4
    assert abs(s["perplexity"] - 4.0) < 1e-5


# -- image tokenizer: files ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["patch_vq", "conv_vq"])
def test_save_load_identical(tmp_path, kind):
    tok = _trained_tiny(kind, steps=2)
    imgs = _images(8, split="test")
    tok.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json",
                                                          "tokenizer.safetensors"]
    back = load_image_tokenizer(tmp_path)
    assert type(back) is type(tok) and back.config == tok.config
    codes = tok.encode(imgs)
    assert torch.equal(back.encode(imgs), codes)
    np.testing.assert_array_equal(back.decode(codes), tok.decode(codes))


def test_load_errors_name_the_file(tmp_path, tiny):
    good = tmp_path / "good"
    tiny.save(good)
    with pytest.raises(TokenizerFileError, match="no such tokenizer folder"):
        load_image_tokenizer(tmp_path / "nope")
    # Corrupt weights: flip bytes in the middle of the file.
    bad = tmp_path / "corrupt"
    tiny.save(bad)
    w = bad / "tokenizer.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2: len(data) // 2 + 16] = b"\xff" * 16
    w.write_bytes(bytes(data))
    with pytest.raises(TokenizerFileError, match="tokenizer.safetensors.*sha256"):
        load_image_tokenizer(bad)
    # Mismatched pair: weights of another architecture under this config.
    other = tmp_path / "other"
    build_image_tokenizer(ImageTokenizerConfig(codebook_size=32, latent_dim=8, hidden=32,
                                               depth=1)).save(other)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "tokenizer.safetensors").write_bytes((other / "tokenizer.safetensors").read_bytes())
    meta = json.loads((good / "tokenizer.json").read_text())
    meta["weights_sha256"] = json.loads((other / "tokenizer.json").read_text())["weights_sha256"]
    (mixed / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerFileError, match=r"do not match the config.*quantizer.codebook"):
        load_image_tokenizer(mixed)
    # Missing file, broken JSON, unknown config key.
    (mixed / "tokenizer.safetensors").unlink()
    with pytest.raises(TokenizerFileError, match="tokenizer.safetensors: missing"):
        load_image_tokenizer(mixed)
    (good / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerFileError, match="tokenizer.json: not valid JSON"):
        load_image_tokenizer(good)
    meta["config"]["codebok_size"] = 3
    (good / "tokenizer.json").write_text(json.dumps(meta))
    with pytest.raises(TokenizerFileError, match="codebok_size"):
        ImageTokenizer.load(good)


def test_configs_are_strict_and_files_match_defaults():
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(TokenizerTrainConfig, {"tokenizer": {"codebook": 5}})
    with pytest.raises(ConfigError):
        from_dict(ImageTokenizerConfig, {"image_size": 30, "patch_size": 4})
    assert load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer.toml") == \
        TokenizerTrainConfig()
    c64 = load_config(TokenizerTrainConfig, ROOT / "configs" / "tokenizer64.toml")
    assert c64.tokenizer.image_size == 64


def test_train_image_tokenizer_writes_outputs(tmp_path):
    cfg = from_dict(TokenizerTrainConfig, {
        "tokenizer": {"codebook_size": 32, "latent_dim": 8, "hidden": 32, "depth": 1},
        "steps": 4, "batch_size": 8, "init_images": 8, "restart_every": 2, "eval_every": 2,
        "val_images": 8, "test_scenes": 16})
    m = train_image_tokenizer(cfg, tmp_path, progress=False)
    names = {p.name for p in tmp_path.iterdir()}
    assert {"tokenizer.json", "tokenizer.safetensors", "metrics.json", "recon.png"} <= names
    assert not any(n.startswith(".") for n in names)                      # no temp files left
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test"]["n_images"] == 16 and 0.0 <= saved["test"]["judge_exact"] <= 1.0
    assert saved["codes_per_image"] == 64 and m["steps"] == 4 and len(m["history"]) == 2
    assert isinstance(load_image_tokenizer(tmp_path), PatchVQ)


# -- text tokenizer ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_tok() -> TextTokenizer:
    from unimm.data.splits import ShapesWorld
    from unimm.data.world import text_corpus
    return TextTokenizer.train(text_corpus(ShapesWorld("train"), 300), vocab_size=400)


def _random_strings(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [(32, 127), (0, 32), (0xA0, 0x2FF), (0x4E00, 0x4FFF), (0x1F300, 0x1F6FF),
             (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randrange(0, 30)):
            lo, hi = rng.choice(pools)
            chars.append(chr(rng.randrange(lo, hi)))
        out.append("".join(chars))
    return out


def test_text_round_trips_any_string(text_tok):
    fixed = ["", " ", "  leading and trailing  ", "A large red circle in the top left.",
             "Quokkas juggle xylophones", "héllo wörld — naïve café", "你好，世界", "🙂👍🏽🇫🇷",
             "tabs\tand\nnewlines\r\n", "\x00\x01 nul", "ZWJ\u200d join", "Ǆ ǅ ǆ ß ẞ ﬁ"]
    for s in fixed + _random_strings(300):
        ids = text_tok.encode(s)
        assert all(0 <= i < text_tok.vocab_size for i in ids)
        assert text_tok.decode(ids) == s, repr(s)
    assert text_tok.encode("") == []


def test_text_compresses_its_language(text_tok):
    s = "There is a large red circle in the top left and a small blue square at the bottom."
    assert len(text_tok.encode(s)) < len(s) / 3


def test_text_save_load_preserves_ids(tmp_path, text_tok):
    path = text_tok.save(tmp_path)
    assert path.name == "text_tokenizer.json"
    back = TextTokenizer.load(tmp_path)
    assert back.vocab_size == text_tok.vocab_size
    for s in ["What color is the small circle?", "naïve 🙂 zebra"] + _random_strings(50, 1):
        assert back.encode(s) == text_tok.encode(s)


def test_text_errors(tmp_path, text_tok):
    with pytest.raises(TextTokenizerError, match="surrogate"):
        text_tok.encode("bad \ud800 text")
    with pytest.raises(TextTokenizerError, match=r"\[0, "):
        text_tok.decode([text_tok.vocab_size])
    with pytest.raises(TextTokenizerError, match="missing"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "text_tokenizer.json").write_text('{"model": ')
    with pytest.raises(TextTokenizerError, match="not a valid"):
        TextTokenizer.load(tmp_path)
    with pytest.raises(ValueError, match="byte alphabet"):
        TextTokenizer.train(["some text"], vocab_size=100)

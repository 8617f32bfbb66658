"""Codebook features for image codes (`code_latents`): zero-initialised, so switching them on
in a warm start changes nothing at first; vocabulary slices agree with the full head; the
codebook term is trained and reloads exactly; bad combinations are refused."""

import pytest
import torch

from unimm.model.backbone import BackboneConfig
from unimm.model.unified import TokenModel
from unimm.pipeline import Pipeline
from unimm.runs import RunConfig
from unimm.utils.config import load_config
from helpers import new_trainer

CFG = BackboneConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64)
N_TEXT, K, D = 20, 12, 5


def _pair():
    torch.manual_seed(0)
    plain = TokenModel(N_TEXT + K, CFG, code_start=N_TEXT)
    torch.manual_seed(0)
    z = torch.randn(K, D, generator=torch.Generator().manual_seed(1))
    feat = TokenModel(N_TEXT + K, CFG, code_start=N_TEXT, code_latents=z)
    return plain, feat


def test_zero_initialised_and_slices_agree():
    plain, feat = _pair()
    tok = torch.randint(0, N_TEXT + K, (2, 9))
    pos = torch.zeros(2, 9, 3, dtype=torch.long)
    pos[..., 0] = torch.arange(9)
    assert torch.equal(plain(tok, pos), feat(tok, pos))          # nothing changes at first
    torch.nn.init.normal_(feat.latent_out.weight)
    torch.nn.init.normal_(feat.latent_in.weight)
    h = feat.hidden(tok, pos)
    full = feat.logits(h)
    assert not torch.allclose(full, plain.logits(plain.hidden(tok, pos)))
    for lo, hi in ((0, N_TEXT), (N_TEXT, N_TEXT + K), (3, N_TEXT + 4), (N_TEXT + 2, N_TEXT + 7)):
        assert torch.allclose(feat.logits(h, lo, hi), full[..., lo:hi], atol=1e-6)
    # text columns are untouched by the codebook term; code columns move with it
    assert torch.allclose(full[..., :N_TEXT], h @ feat.head.weight[:N_TEXT].T, atol=1e-6)


@pytest.mark.slow
def test_shape_and_conflicts_are_checked(tiny_tokenizer):
    with pytest.raises(ValueError, match=r"\(12, d\)"):
        TokenModel(N_TEXT + K, CFG, code_start=N_TEXT, code_latents=torch.randn(K + 1, D))
    with pytest.raises(ValueError, match="pick one"):
        load_config(RunConfig, "configs/tiny.toml", ["model.code_latents=true", "model.code_mlp=8"])
    with pytest.raises(ValueError, match="flow"):
        load_config(RunConfig, "configs/tiny.toml", ["model.code_latents=true", "paradigm=flow"])


@pytest.fixture(scope="module")
def plain_run(tiny_tokenizer, tmp_path_factory):
    d = tmp_path_factory.mktemp("plain")
    cfg = load_config(RunConfig, "configs/tiny.toml", [f"image_tokenizer_path={tiny_tokenizer}",
                                                       "train.max_steps=4"])
    new_trainer(cfg, d, progress=False).fit()
    return d


@pytest.mark.slow
def test_warm_start_trains_and_reloads(plain_run, tmp_path):
    src = plain_run
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"train.init_from={src}", "model.code_latents=true", "train.max_steps=3"])
    tr = new_trainer(cfg, tmp_path / "cl", progress=False)
    own, ref = tr.model.state_dict(), Pipeline.load(src).parts.model.state_dict()
    assert set(own) - set(ref) == {"code_latents", "latent_in.weight", "latent_out.weight"}
    assert torch.equal(own["code_latents"],
                       torch.nn.functional.normalize(tr.parts.image_tok.quantizer.codebook.float(),
                                                     dim=1))
    tr.fit()
    assert tr.model.latent_out.weight.abs().sum() > 0              # the new maps learn
    live = Pipeline(tr.parts, model=tr.model.eval())
    loaded = Pipeline.load(tmp_path / "cl", device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(live.parts.model.state_dict().values(),
                                                 loaded.parts.model.state_dict().values()))
    assert (live.draw(["a red circle"])[0] == loaded.draw(["a red circle"])[0]).all()

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# compiled decoding libraries of this session go to a temporary folder, not ~/.cache
os.environ.setdefault("UNIMM_CACHE_DIR", __import__("tempfile").mkdtemp(prefix="unimm-cache-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """An image tokenizer trained once per test session with configs/tiny.toml (seconds)."""
    from unimm.train.tokenizer import train_image_tokenizer
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    out = tmp_path_factory.mktemp("tok")
    train_image_tokenizer(load_config(RunConfig, "configs/tiny.toml").image_tokenizer, out,
                          progress=False)
    return out


@pytest.fixture
def plain_ops():
    """The model's plain operations (model/ops.py) for the test, whether or not unimm.fast is
    installed: core tests check the plain model; tests/test_fast.py checks the fast paths."""
    from unimm.model import ops
    with ops.plain():
        yield

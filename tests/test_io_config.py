from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pytest
from PIL import Image

from unimm.data.images import ImageError, load_image
from unimm.utils.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from unimm.utils.io import atomic_path, write_json


@dataclass(frozen=True)
class Opt:
    lr: float = 1e-3
    steps: int = 10
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Run:
    opt: Opt = field(default_factory=Opt)
    name: str = "run"
    sizes: tuple[int, ...] = (1, 2)
    pair: tuple[int, str] = (0, "a")


def test_config_strict_and_round_trip(tmp_path):
    r = from_dict(Run, {"opt": {"lr": 1, "kind": "b"}, "sizes": [3]})
    assert r.opt.lr == 1.0 and r.opt.kind == "b" and r.sizes == (3,)
    assert from_dict(Run, to_dict(r)) == r
    assert from_dict(Run, {"pair": [3, "b"]}).pair == (3, "b")       # fixed-length tuples
    with pytest.raises(ConfigError, match="expected 2 items"):
        from_dict(Run, {"pair": [3]})
    with pytest.raises(ConfigError, match="expected a string"):
        from_dict(Run, {"pair": [3, 4]})
    with pytest.raises(ConfigError, match="unknown config key opt.lrr; valid keys of opt: kind, lr, steps"):
        from_dict(Run, {"opt": {"lrr": 1}})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Run, {"opt": {"steps": "ten"}})
    with pytest.raises(ConfigError, match="one of 'a', 'b'"):
        from_dict(Run, {"opt": {"kind": "c"}})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_dict(Run, {"opt": {"steps": True}})
    p = tmp_path / "c.toml"
    p.write_text('name = "x"\n[opt]\nlr = 0.5\n')
    r = load_config(Run, p, ["opt.steps=7", "opt.kind=b"])
    assert (r.name, r.opt.lr, r.opt.steps, r.opt.kind) == ("x", 0.5, 7, "b")
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["oops"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Run, tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(Run, tmp_path / "bad.toml")


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "f.txt") as t:
            t.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    write_json(tmp_path / "ok.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["ok.json"]
    import os
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "ok.json").stat().st_mode & 0o777 == 0o666 & ~umask   # not mkstemp's 0600


@pytest.mark.slow
def test_image_input_errors(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    assert load_image(rgb).shape == (32, 32, 3)
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="cannot read"):
        load_image(tmp_path / "bad.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 100)).save(tmp_path / "a.png")
    with pytest.raises(ImageError, match="transparent"):
        load_image(tmp_path / "a.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert load_image(tmp_path / "opaque.png")[0, 0].tolist() == [1, 2, 3]
    Image.new("L", (8, 8)).save(tmp_path / "g.png")
    with pytest.raises(ImageError, match="greyscale"):
        load_image(tmp_path / "g.png")
    assert load_image(tmp_path / "g.png", allow_gray=True).shape == (8, 8, 3)
    Image.new("RGB", (8000, 8000)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="over the limit"):
        load_image(tmp_path / "big.png")
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 3.0))
    with pytest.raises(ImageError, match="expected"):
        load_image(42)

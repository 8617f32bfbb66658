"""The server is an adapter over Pipeline's public surface: every endpoint works on a pipeline
whose internals (parts, vocabulary, config, network, paradigm object, private members) cannot
be read, and the app exposes exactly the documented routes."""

import base64
import io

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from unimm.data.splits import ShapesWorld  # noqa: E402
from unimm.pipeline import Pipeline  # noqa: E402
from unimm.serve import ServeSettings, create_app  # noqa: E402

INTERNALS = {"parts", "vocab", "cfg", "model", "paradigm"}


class PublicOnly:
    """A Pipeline seen from outside: its internals and private members are refused (and
    recorded, since the server would turn the exception into a 500)."""

    def __init__(self, pipe: Pipeline):
        self._pipe, self.refused = pipe, []

    def __getattr__(self, name):
        if name in INTERNALS or name.startswith("_"):
            self.refused.append(name)
            raise AssertionError(f"the server read pipe.{name}")
        return getattr(self._pipe, name)


def _png(a) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.slow
def test_every_endpoint_uses_only_the_public_pipeline():
    pipe = PublicOnly(Pipeline.load())
    png = _png(ShapesWorld("test").image(0))
    msgs = [{"role": "user", "content": [
        {"type": "text", "text": "How many shapes are there?"},
        {"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}]
    with TestClient(create_app(pipe, ServeSettings(wait_ms=0))) as c:
        r = c.post("/v1/chat/completions", json={"messages": msgs, "max_tokens": 8})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] > pipe.image_tokens
        with c.stream("POST", "/v1/chat/completions",
                      json={"messages": msgs, "stream": True, "max_tokens": 8}) as s:
            events = [ln for ln in s.iter_lines() if ln.startswith("data: ")]
        assert events[-1] == "data: [DONE]" and '"error"' not in "".join(events)
        r = c.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2, "seed": 0})
        assert r.status_code == 200 and len(r.json()["data"]) == 2, r.text
        r = c.post("/v1/images/edits", data={"prompt": "Make the circle blue."},
                   files={"image": ("s.png", png, "image/png")})
        assert r.status_code == 200, r.text
        assert c.get("/v1/models").json()["data"][0]["id"] == f"unimm-{pipe.name}"
        health = c.get("/health").json()
        assert health["paradigm"] == pipe.paradigm_name
        assert health["image_size"] == pipe.image_size
        assert c.get("/").status_code == 200
        paths = set(c.get("/openapi.json").json()["paths"])
    assert pipe.refused == []
    assert paths == {"/v1/chat/completions", "/v1/images/generations", "/v1/images/edits",
                     "/v1/models", "/health"}

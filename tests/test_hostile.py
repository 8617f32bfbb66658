"""Hostile input: streaming that streams, the defects an outside probe found (each test here
failed before its fix), and two corpora replayed in full: bad HTTP requests against a live
`unimm serve` and bad `unimm` invocations."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unimm.data.splits import ShapesWorld
from unimm.pipeline import InputError, Pipeline, default_run_dir
from helpers import new_trainer

DATA = Path(__file__).parent / "data"


def png_header_bomb(w: int, h: int) -> bytes:
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_hostile_http",
                                                  DATA / "make_hostile_http.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.png_header_bomb(w, h)


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.load()


def scene(i=0) -> np.ndarray:
    return ShapesWorld("test").image(i)


def png(a: np.ndarray | Image.Image) -> bytes:
    buf = io.BytesIO()
    (a if isinstance(a, Image.Image) else Image.fromarray(a)).save(buf, format="PNG")
    return buf.getvalue()


# ---- 1. streaming through the Python API ----------------------------------------------------------
@pytest.mark.slow
def test_pipeline_stream_pieces_add_up_to_the_answer_and_come_one_by_one(pipe):
    q = "Describe the picture."
    pieces = list(pipe.stream(scene(3), q))
    assert "".join(pieces) == pipe.ask(scene(3), q)
    assert len(pieces) >= len(pipe.count_tokens(pipe.ask(scene(3), q))) // 2 >= 5
    seen = []
    out = pipe.answer([scene(1), scene(2)], [q, "How many shapes are there?"],
                      on_token=lambda row, tok: seen.append((row, tok)))
    for row in (0, 1):
        toks = [t for r, t in seen if r == row]
        assert toks[-1] == pipe.vocab.eos                 # every token, then the row's end
        assert pipe.parts.text_tok.decode(toks[:-1]).strip() == out[row]


def test_pipeline_stream_checks_input_at_the_call_and_stops_when_closed(pipe):
    with pytest.raises(InputError):
        pipe.stream(scene(0), "")                         # before any iteration
    with pytest.raises(InputError):
        pipe.stream(scene(0), "What is it?", seed=-1)
    it = pipe.stream(scene(0), "Describe the picture.")
    assert next(it)
    it.close()                                            # the worker stops at its next token


def _sse(url: str, body: dict) -> list[tuple[float, str]]:
    """(arrival time, data) of each server-sent event of a streamed POST."""
    import httpx
    out = []
    with httpx.stream("POST", url, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                out.append((time.perf_counter(), line[6:]))
    return out


def _stream_caption_in_chunks(pipe):
    """The shipped model's caption, streamed over HTTP: >= 10 content chunks, the first one
    received before the last token was decoded (decode_logits is timed on the model)."""
    from test_serve import Server, data_url
    from unimm.serve import ServeSettings, create_app
    steps = []
    real = pipe.model.decode_logits

    def timed(*a, **k):
        out = real(*a, **k)
        steps.append(time.perf_counter())
        return out
    pipe.model.decode_logits = timed
    srv = Server(create_app(pipe, ServeSettings(wait_ms=0)))
    try:
        msgs = [{"role": "user", "content": [
            {"type": "text", "text": "Describe the picture."},
            {"type": "image_url", "image_url": {"url": data_url(scene(5))}}]}]
        events = _sse(srv.url + "/v1/chat/completions", {"messages": msgs, "stream": True})
    finally:
        srv.stop()
        del pipe.model.decode_logits
    assert events[-1][1] == "[DONE]"
    chunks = [(t, json.loads(d)) for t, d in events[:-1]]
    assert all("choices" in c for _, c in chunks), chunks[-1]
    content = [(t, c["choices"][0]["delta"].get("content")) for t, c in chunks]
    content = [(t, x) for t, x in content if x]
    text = "".join(x for _, x in content)
    assert text == pipe.caption(scene(5))
    assert len(pipe.count_tokens(text)) >= 10
    assert len(content) >= 10, [x for _, x in content]
    assert content[0][0] < steps[-1], "the first piece arrived only after decoding ended"


def test_streamed_caption_arrives_in_pieces_while_decoding(pipe):
    _stream_caption_in_chunks(pipe)


@pytest.mark.slow
def test_streamed_caption_arrives_in_pieces_with_compiled_decoding():
    pipe = Pipeline.load(compile=True)
    pipe.model.backbone.filler = None        # the steps stream; prompt fills stay eager
    pipe.caption(scene(5))                   # compiles the step library first
    _stream_caption_in_chunks(pipe)


def test_a_stream_that_fails_mid_decoding_ends_with_an_error_event_and_done(pipe):
    from test_serve import Server, data_url
    from unimm.serve import ServeSettings, create_app
    calls = []
    real = pipe.model.decode_logits

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated failure in the middle of decoding")
        return real(*a, **k)
    pipe.model.decode_logits = failing
    srv = Server(create_app(pipe, ServeSettings(wait_ms=0)))
    try:
        msgs = [{"role": "user", "content": [
            {"type": "text", "text": "Describe the picture."},
            {"type": "image_url", "image_url": {"url": data_url(scene(0))}}]}]
        events = [d for _, d in _sse(srv.url + "/v1/chat/completions",
                                     {"messages": msgs, "stream": True})]
    finally:
        srv.stop()
        del pipe.model.decode_logits
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["type"] == "server_error" and err["message"]
    assert any(json.loads(e)["choices"][0]["delta"].get("content") for e in events[1:-2])


# ---- 2, 3, 10. Python API inputs --------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_positive_temperatures_sample_the_greedy_limit(pipe):
    greedy = pipe.generate("a large red circle in the center", temperature=0)[0]
    for t in (1e-300, 5e-324, 1e-39, 1e-7):
        assert np.array_equal(pipe.generate("a large red circle in the center", temperature=t,
                                            seed=0)[0], greedy)
    edited = pipe.edit(scene(0), "Make the circle blue.", temperature=1e-300, seed=0)
    assert edited.shape == (32, 32, 3)


@pytest.mark.parametrize("call, needle", [
    (lambda p: p.generate("a red circle", temperature=float("nan")), "temperature"),
    (lambda p: p.generate("a red circle", temperature=float("inf")), "temperature"),
    (lambda p: p.generate("a red circle", temperature="1"), "temperature"),
    (lambda p: p.generate("a red circle", seed=True), "seed"),
    (lambda p: p.generate("a red circle", seed=2**64), "seed"),
    (lambda p: p.generate("a red circle", seed=-1), "seed"),
    (lambda p: p.generate("a red circle", seed=1.5), "seed"),
    (lambda p: p.generate("a red circle", guidance="abc"), "guidance"),
    (lambda p: p.generate("a red circle", guidance=float("nan")), "guidance"),
    (lambda p: p.generate("a red circle", guidance=True), "guidance"),
    (lambda p: p.generate("a red circle", top_k=1.5), "top_k"),
    (lambda p: p.generate("a red circle", top_p=0), "top_p"),
    (lambda p: p.generate("a red circle", n=True), "n"),
    (lambda p: p.generate("a red \ud800 circle"), "surrogate"),
    (lambda p: p.ask(scene(0), "What is \udcff?"), "surrogate"),
    (lambda p: p.edit(scene(0), "Make it \ud800 blue."), "surrogate"),
    (lambda p: p.draw("a red circle"), "list"),
    (lambda p: p.answer([scene(0)], ["What?"], max_new=0), "max_new"),
])
def test_bad_python_api_input_is_an_input_error_naming_the_accepted_range(pipe, call, needle):
    with pytest.raises(InputError) as e:
        call(pipe)
    assert needle in str(e.value)


def test_a_folder_passed_as_an_image_says_it_is_a_folder(pipe, tmp_path):
    from unimm.data.images import ImageError
    with pytest.raises(ImageError, match="is a folder"):
        pipe.ask(tmp_path, "What color is the circle?")


# ---- 5, 8, 9. run folders -----------------------------------------------------------------------
def _copy_default(tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(default_run_dir(), run)
    return run


def test_flipped_bytes_in_the_weights_are_reported_as_corrupt(tmp_path):
    from unimm.runs import load_run
    run = _copy_default(tmp_path)
    w = run / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0x01                 # one bit, deep inside a tensor
    w.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt: checksum mismatch in model.safetensors"):
        load_run(run)
    cfg = json.loads((run / "config.json").read_text())
    del cfg["weights"]                           # a run saved before checksums: unverified
    (run / "config.json").write_text(json.dumps(cfg))
    load_run(run)


@pytest.mark.parametrize("edit, needle", [
    (lambda d: d["config"]["model"].update(n_layers=10**7), "n_layers"),
    (lambda d: d["config"]["model"].update(max_seq_len=10**12), "max_seq_len"),
    (lambda d: d["config"]["model"].update(dim=8192, n_layers=512, n_heads=64, n_kv_heads=64,
                                           mlp_hidden=None, rope_sections=None), "parameters"),
    (lambda d: d["config"]["data"].update(text_vocab_size=10**9), "text_vocab_size"),
    (lambda d: d["config"]["image_tokenizer"]["tokenizer"].update(codebook_size=10**9),
     "codebook_size"),
])
def test_sizes_in_a_run_config_are_bounded_before_anything_is_allocated(tmp_path, edit, needle):
    from unimm.runs import load_run
    run = _copy_default(tmp_path)
    d = json.loads((run / "config.json").read_text())
    edit(d)
    (run / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=f"{needle}.*(accepted|at most)"):
        load_run(run)


def test_deeply_nested_json_is_a_clear_error(tmp_path):
    from unimm.data.manifest import ManifestError, load_manifest
    from unimm.runs import RunError, load_run
    run = _copy_default(tmp_path)
    (run / "config.json").write_text("[" * 100000)
    with pytest.raises(RunError, match="nested too deeply"):
        load_run(run)
    m = tmp_path / "m.jsonl"
    m.write_text("[" * 100000 + "\n")
    with pytest.raises(ManifestError, match="line 1.*nested too deeply"):
        load_manifest(m)


def test_invalid_utf8_in_a_manifest_is_reported_with_its_line(tmp_path):
    from unimm.data.manifest import ManifestError, load_manifest
    Image.fromarray(scene(0)).save(tmp_path / "a.png")
    good = json.dumps({"id": "a", "image": "a.png", "caption": "a red circle"})
    m = tmp_path / "m.jsonl"
    m.write_bytes(good.encode() + b"\n" + b'{"id": "b", "image": "a.png", "caption": "caf\xe9"}\n')
    with pytest.raises(ManifestError, match="line 2.*not UTF-8"):
        load_manifest(m)


# ---- 7. what a killed checkpoint write leaves behind -------------------------------------------
def test_a_resumed_run_removes_what_a_killed_checkpoint_write_left(tiny_tokenizer, tmp_path):
    from unimm.runs.checkpoint import save_checkpoint
    from unimm.runs import RunConfig
    from unimm.utils.config import load_config
    cfg = load_config(RunConfig, "configs/tiny.toml",
                      [f"image_tokenizer_path={tiny_tokenizer}", "train.max_steps=4"])
    run = tmp_path / "run"
    tr = new_trainer(cfg, run, progress=False)
    tr.fit()

    class Killed(BaseException):
        pass
    import unimm.runs.checkpoint as ck
    real = ck.save_weights

    def dies_midway(m, path):                   # a kill after the first file of a checkpoint
        if path.name == "ema.safetensors" or path.name == "optim.safetensors":
            path.write_bytes(b"half")
            raise Killed
        return real(m, path)
    ck.save_weights = dies_midway
    tmp_left = Path(__import__("tempfile").mkdtemp(prefix=".ckpt.", dir=run))
    (tmp_left / "model.safetensors").write_bytes(b"x" * 1000)
    (run / ".model.safetensors.abc123.tmp").write_bytes(b"partial")
    (run / "tokenizer" / ".tokenizer.json.x1.tmp").write_bytes(b"partial")
    try:
        with pytest.raises(Killed):
            save_checkpoint(run / "ckpt", tr.model, tr.opt, tr.ema, {"step": 99})
    finally:
        ck.save_weights = real
    def stale(p: Path) -> bool:
        return ".ckpt." in str(p.relative_to(run)) or p.name.endswith(".tmp")
    keep = {p for p in run.rglob("*") if not stale(p)}
    assert len(keep) < len(list(run.rglob("*")))
    tr2 = new_trainer(cfg, run, progress=False)
    assert tr2.resume() and tr2.step == 4
    assert [p for p in run.rglob("*") if stale(p)] == []
    assert all(p.exists() for p in keep)                            # nothing else was touched


# ---- 11. strict types at the HTTP edge ------------------------------------------------------------
def test_http_schemas_are_strict_about_json_types(pipe):
    from fastapi.testclient import TestClient
    from unimm.serve import create_app
    from test_serve import data_url
    with TestClient(create_app(pipe)) as c:
        msgs = [{"role": "user", "content": [
            {"type": "text", "text": "What color is the circle?"},
            {"type": "image_url", "image_url": {"url": data_url(scene(0))}}]}]
        for bad in ({"stream": "yes"}, {"stream": 1}, {"n": "1"}, {"n": True}, {"n": 2},
                    {"temperature": "1"}, {"seed": "3"}, {"seed": True}, {"max_tokens": "5"}):
            r = c.post("/v1/chat/completions", json={"messages": msgs, **bad})
            assert r.status_code == 400 and r.json()["error"]["param"], (bad, r.text)
        for bad in ({"n": "2"}, {"n": True}, {"n": 2.0}, {"guidance": "1.5"}, {"seed": 1.0}):
            r = c.post("/v1/images/generations", json={"prompt": "a red circle", **bad})
            assert r.status_code == 400, (bad, r.text)
        ok = c.post("/v1/images/generations", json={"prompt": "a red circle", "n": 2,
                                                    "temperature": 1, "guidance": 2})
        assert ok.status_code == 200 and len(ok.json()["data"]) == 2
        r = c.post("/v1/images/generations", content=json.dumps({"prompt": "a red \ud800 circle"}),
                   headers={"content-type": "application/json"})
        assert r.status_code == 400 and "unicode" in r.json()["error"]["message"].lower()
        r = c.post("/v1/chat/completions", json={"messages": msgs, "temperature": 1e-300})
        assert r.status_code == 200


# ---- the CLI corpus -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile_files(tmp_path_factory):
    t = tmp_path_factory.mktemp("hostile")
    (t / "dir").mkdir()
    (t / "file.txt").write_text("a file, not a folder")
    Image.fromarray(scene(0)).save(t / "scene.png")
    (t / "notimage.png").write_text("not an image at all")
    (t / "empty.png").write_bytes(b"")
    (t / "bomb.png").write_bytes(png_header_bomb(100000, 100000))
    (t / "trunc.png").write_bytes(png(scene(0))[:60])
    Image.new("RGBA", (32, 32), (255, 0, 0, 0)).save(t / "rgba.png")
    (t / "bad.toml").write_text("name = \n[[[")
    (t / "deep.toml").write_text("a = " + "[" * 100000)
    (t / "huge_layers.toml").write_text("[model]\nn_layers = 10000000\n")
    (t / "huge_seq.toml").write_text("[model]\nmax_seq_len = 1000000000000\n")
    (t / "unknown_key.toml").write_text("[model]\nn_layerz = 2\n")
    (t / "deep.jsonl").write_text("[" * 100000 + "\n")
    (t / "latin1.jsonl").write_bytes(b'{"id": "a", "image": "scene.png", "caption": "caf\xe9"}\n')
    (t / "empty.jsonl").write_text("\n\n")
    for name in ("run_deep", "run_badjson", "run_huge", "run_corrupt"):
        shutil.copytree(default_run_dir(), t / name)
    (t / "run_deep" / "config.json").write_text('{"a": ' * 100000)
    (t / "run_badjson" / "config.json").write_text("{")
    d = json.loads((t / "run_huge" / "config.json").read_text())
    d["config"]["model"]["max_seq_len"] = 10**12
    (t / "run_huge" / "config.json").write_text(json.dumps(d))
    w = t / "run_corrupt" / "model.safetensors"
    b = bytearray(w.read_bytes())
    b[-100] ^= 0xFF
    w.write_bytes(bytes(b))
    return t


def cli_corpus() -> list[str]:
    lines = (DATA / "hostile_cli.txt").read_text().splitlines()
    return [ln for ln in lines if ln.strip() and not ln.startswith("#")]


def test_the_cli_corpus_is_large_enough():
    assert len(cli_corpus()) >= 50


@pytest.mark.parametrize("line", cli_corpus())
@pytest.mark.slow
def test_bad_cli_call_exits_2_with_one_error_line(line, hostile_files, capsys, monkeypatch):
    from unimm.cli.main import main
    argv = [a.replace("{t}", str(hostile_files)).replace("\\udce9", "\udce9")
            for a in shlex.split(line)]
    monkeypatch.setattr(sys, "argv", ["unimm", *argv])
    monkeypatch.chdir(Path(__file__).parent.parent)
    with pytest.raises(SystemExit) as e:
        main()
    out = capsys.readouterr()
    err = [ln for ln in out.err.splitlines() if ln.strip()]
    assert e.value.code == 2, (line, out.out[-500:], out.err[-2000:])
    assert len(err) == 1 and err[0].startswith("unimm: error: "), (line, out.err[-2000:])
    assert "Traceback" not in out.out + out.err


@pytest.mark.slow
def test_a_bad_cli_call_in_a_real_process_prints_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "unimm.cli.main", "generate", "a red circle",
                        "-o", str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("unimm: error: ") and "is a folder" in r.stderr


# ---- the HTTP corpus ------------------------------------------------------------------------------
def http_corpus() -> list[dict]:
    return [json.loads(ln) for ln in (DATA / "hostile_http.jsonl").read_text().splitlines()]


def _rss_kb(pid: int) -> int:
    for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
        if ln.startswith("VmRSS:"):
            return int(ln.split()[1])
    return 0


def _send(port: int, req: dict) -> tuple[int, bytes]:
    """One corpus request over a fresh connection (http.client: any header, any body)."""
    import httpx
    headers = dict(req.get("headers", {}))
    chunked = headers.pop("x-chunked", None)
    length = headers.pop("x-content-length", None)
    if "form" in req:
        files = {k: (v[0], base64.b64decode(v[1]), v[2]) for k, v in req["files"].items()}
        form = {k: v.encode("utf-8", "surrogatepass") for k, v in req["form"].items()}
        # httpx sends a form without files urlencoded: an empty file part keeps it multipart
        built = httpx.Request("POST", "http://x/", data=form,
                              files=files or {"_": ("", b"", "text/plain")})
        body = built.read()
        headers["content-type"] = built.headers["content-type"]
    elif "json" in req:
        body = json.dumps(req["json"]).encode()
        headers.setdefault("content-type", "application/json")
    elif "raw_b64" in req:
        body = base64.b64decode(req["raw_b64"])
    else:
        body = req.get("raw", "").encode("utf-8", "surrogatepass")
    if "pad" in req:
        body = body.replace(b"@PAD@", req["pad"]["char"].encode() * req["pad"]["n"])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest(req["method"], req["path"], skip_accept_encoding=True)
        for k, v in headers.items():
            conn.putheader(k, v)
        if chunked:
            conn.putheader("transfer-encoding", "chunked")
            conn.endheaders()
            conn.send(f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        else:
            if req["method"] in ("POST", "PUT", "PATCH") or body:
                conn.putheader("content-length", length or str(len(body)))
            conn.endheaders()
            if body and length is None:
                conn.send(body)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def live_server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "unimm.cli.main", "serve", "--port",
                             str(port), "--wait-ms", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while True:
        try:
            if _send(port, {"method": "GET", "path": "/health"})[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.2)
    yield port, proc
    proc.terminate()
    proc.wait(30)


def test_the_http_corpus_is_large_enough():
    assert len(http_corpus()) >= 150


@pytest.mark.slow
def test_hostile_http_corpus_gets_no_5xx_and_openai_errors(live_server):
    port, proc = live_server
    for warm in ({"method": "POST", "path": "/v1/images/generations",
                  "json": {"prompt": "a red circle", "n": 2}},):
        assert _send(port, warm)[0] == 200
    rss0 = _rss_kb(proc.pid)
    problems = []
    for req in http_corpus():
        try:
            status, body = _send(port, req)
        except (OSError, http.client.HTTPException) as e:
            problems.append(f"{req['name']}: connection failed ({e})")
            continue
        if status >= 500:
            problems.append(f"{req['name']}: {status} {body[:200]!r}")
        elif req["expect"] == "ok" and not 200 <= status < 300:
            problems.append(f"{req['name']}: expected success, got {status} {body[:200]!r}")
        elif req["expect"] in ("error", "protocol") and not 400 <= status < 500:
            problems.append(f"{req['name']}: expected a 4xx, got {status}")
        if status >= 400 and req["method"] != "HEAD" and req["expect"] != "protocol":
            try:
                err = json.loads(body)["error"]
                assert isinstance(err["message"], str) and err["message"] and err["type"]
                assert set(err) == {"message", "type", "param", "code"}
            except (ValueError, KeyError, TypeError, AssertionError):
                problems.append(f"{req['name']}: {status} without an OpenAI error object: "
                                f"{body[:200]!r}")
        health = _send(port, {"method": "GET", "path": "/health"})
        if health[0] != 200 or json.loads(health[1])["status"] != "ok":
            problems.append(f"{req['name']}: /health failed afterwards")
            break
    growth_mb = (_rss_kb(proc.pid) - rss0) / 1024
    assert not problems, "\n".join(problems)
    assert growth_mb < 300, f"server RSS grew {growth_mb:.0f} MB over the corpus"
    assert proc.poll() is None
    assert torch                                     # the server ran in its own process

"""The server on a tiny run: the official `openai` client, bad input, back-pressure, batching,
and the web page in headless Chromium (a real uvicorn server on a free loopback port)."""

import base64
import io
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
import uvicorn  # noqa: E402

from unimm.data.splits import ShapesWorld  # noqa: E402
from unimm.pipeline import Pipeline  # noqa: E402
from unimm.serve import ServeSettings, create_app  # noqa: E402
from unimm.runs import RunConfig  # noqa: E402
from unimm.utils.config import load_config  # noqa: E402
from helpers import new_trainer  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="module")
def tiny_run(tiny_tokenizer, tmp_path_factory):
    tok = tiny_tokenizer
    d = tmp_path_factory.mktemp("run")
    cfg = load_config(RunConfig, "configs/tiny.toml", [f"image_tokenizer_path={tok}"])
    new_trainer(cfg, d, progress=False).fit()
    return d


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return Pipeline.load(tiny_run, device="cpu")


class Server:
    """uvicorn in a thread on a free loopback port; stop() is its graceful shutdown."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.time() + 30
        while not self.server.started:
            assert time.time() < end and self.thread.is_alive(), "server did not start"
            time.sleep(0.05)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(pipe):
    app = create_app(pipe, ServeSettings(max_body_bytes=2**20, max_image_pixels=256 * 256,
                                         max_n=4, wait_ms=50))
    srv = Server(app)
    srv.app = app
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def data_url(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def scene(i=0) -> np.ndarray:
    return ShapesWorld("test").image(i)


def ask(text, image=None):
    content = [{"type": "text", "text": text}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": data_url(image)}})
    return {"role": "user", "content": content}


def decode_png(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


# ---- the openai client ------------------------------------------------------------------------
@pytest.mark.slow
def test_openai_chat_answers_like_the_pipeline(client, pipe):
    model = client.models.list().data[0].id
    r = client.chat.completions.create(model=model, messages=[ask("How many shapes are there?",
                                                                  scene(0))])
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == pipe.ask(scene(0), "How many shapes are there?")


def test_follow_up_without_an_image_is_about_the_latest_image(client, pipe):
    msgs = [ask("What color is the circle?", scene(1)),
            {"role": "assistant", "content": "red"},
            ask("What is it?", scene(2)),
            {"role": "assistant", "content": "a square"},
            {"role": "user", "content": "How many shapes are there?"}]
    r = client.chat.completions.create(model="unimm", messages=msgs)
    assert r.choices[0].message.content == pipe.ask(scene(2), "How many shapes are there?")


def test_streaming_sends_tokens_as_they_come_and_equals_the_full_answer(client, pipe):
    q = "Describe the picture."
    chunks = list(client.chat.completions.create(model="unimm", messages=[ask(q, scene(3))],
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    full = pipe.ask(scene(3), q)
    assert text == full
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == list(pipe.stream(scene(3), q))      # the Python API's pieces, one by one
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_openai_images_generate_and_edit(client, pipe):
    r = client.images.generate(model="unimm", prompt="a large red circle in the center", n=2,
                               response_format="b64_json")
    assert len(r.data) == 2
    for d in r.data:
        assert decode_png(d.b64_json).shape == (pipe.image_size, pipe.image_size, 3)
    seeded = [client.images.generate(prompt="two squares", extra_body={"seed": 7, "temperature": 1.0,
                                                                      "guidance": 2.0})
              for _ in range(2)]
    assert seeded[0].data[0].b64_json == seeded[1].data[0].b64_json       # a seed reproduces
    e = client.images.edit(model="unimm", image=("scene.png", png(scene(0)), "image/png"),
                           prompt="Make the circle blue.")
    assert decode_png(e.data[0].b64_json).shape == (pipe.image_size, pipe.image_size, 3)


def test_health_models_and_openapi_match_what_is_served(server):
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["image_size"] == 32
    models = httpx.get(server.url + "/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == h["model"]
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    assert set(paths) == {"/v1/chat/completions", "/v1/images/generations", "/v1/images/edits",
                          "/v1/models", "/health"}
    assert "multipart/form-data" in paths["/v1/images/edits"]["post"]["requestBody"]["content"]
    assert httpx.get(server.url + "/").text.startswith("<!doctype html>")


# ---- bad input ----------------------------------------------------------------------------------
def error_of(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert isinstance(err["message"], str) and err["message"] and err["type"]
    return err


@pytest.mark.slow
def test_bad_requests_get_openai_style_4xx_errors(server):
    u, chat = server.url, server.url + "/v1/chat/completions"
    gen = u + "/v1/images/generations"
    good = [ask("How many shapes are there?", scene(0))]
    assert "bogus" in error_of(httpx.post(gen, json={"prompt": "a", "bogus": 1}), 400)["message"]
    error_of(httpx.post(chat, json={"messages": good, "temperature": "hot"}), 400)
    error_of(httpx.post(gen, json={"prompt": "a red circle", "n": "two"}), 400)
    assert "n must" in error_of(httpx.post(gen, json={"prompt": "a red circle", "n": 99}), 400)["message"]
    error_of(httpx.post(gen, json={"prompt": "   "}), 400)
    error_of(httpx.post(gen, json={"prompt": "a red circle", "size": "1024x1024"}), 400)
    error_of(httpx.post(gen, json={"prompt": "x" * 5000}), 400)
    error_of(httpx.post(gen, json={"prompt": "a red circle", "model": "gpt-9"}), 404)
    error_of(httpx.post(gen, content=b"{not json", headers={"content-type": "application/json"}), 400)
    error_of(httpx.post(gen, content=b"x" * (2**20 + 1)), 413)
    error_of(httpx.post(chat, json={"messages": []}), 400)
    error_of(httpx.post(chat, json={"messages": [{"role": "user", "content": "hi"}]}), 400)
    not_image = "data:text/plain;base64," + base64.b64encode(b"hello").decode()
    bad_parts = [[{"type": "image_url", "image_url": {"url": not_image}}],
                 [{"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}],
                 [{"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!"}}],
                 [{"type": "image_url", "image_url": {"url": "data:image/png;base64,"
                                                      + base64.b64encode(b"not a png").decode()}}],
                 [{"type": "image_url", "image_url": {"url": data_url(np.zeros((300, 300, 3), np.uint8))}}],
                 [{"type": "video", "video": {}}]]
    for parts in bad_parts:
        msgs = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, *parts]}]
        error_of(httpx.post(chat, json={"messages": msgs}), 400)
    edits = u + "/v1/images/edits"
    error_of(httpx.post(edits, data={"prompt": "Make it blue.", "mask": "x"},
                        files={"image": ("a.png", png(scene(0)), "image/png")}), 400)
    error_of(httpx.post(edits, data={"prompt": "Make it blue."},
                        files={"image": ("a.txt", b"hello", "text/plain")}), 400)
    error_of(httpx.post(edits, data={"prompt": "Make it blue."}), 400)
    error_of(httpx.get(u + "/v1/nothing"), 404)
    assert httpx.get(u + "/health").json()["status"] == "ok"          # still serving


def test_full_queue_answers_503_with_retry_after(pipe):
    srv = Server(create_app(pipe, ServeSettings(queue_size=2, retry_after_s=3)))
    try:
        r = httpx.post(srv.url + "/v1/images/generations", json={"prompt": "a red circle", "n": 3})
        assert error_of(r, 503)["code"] == "overloaded"
        assert r.headers["retry-after"] == "3"
        ok = httpx.post(srv.url + "/v1/images/generations", json={"prompt": "a red circle", "n": 2})
        assert ok.status_code == 200
    finally:
        srv.stop()


def test_a_request_past_its_timeout_gets_504_and_the_server_goes_on(pipe):
    srv = Server(create_app(pipe, ServeSettings(request_timeout_s=0.05, wait_ms=300)))
    try:
        r = httpx.post(srv.url + "/v1/images/generations", json={"prompt": "a red circle"})
        assert error_of(r, 504)["code"] == "timeout"
        assert httpx.get(srv.url + "/health").json()["status"] == "ok"
    finally:
        srv.stop()


@pytest.mark.slow
def test_serve_command_reports_user_errors_with_exit_2(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "unimm.cli.main", "serve", "--run",
                        str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no run folder" in r.stderr
    r = subprocess.run([sys.executable, "-m", "unimm.cli.main", "serve", "--max-batch", "999"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "max_batch" in r.stderr


def test_concurrent_requests_share_a_batch(server):
    before = dict(server.app.state.batcher.stats["by_kind"]["draw"])
    prompts = [f"a small {c} square" for c in ("red", "green", "blue", "yellow", "purple", "cyan")]
    with ThreadPoolExecutor(len(prompts)) as ex:
        rs = list(ex.map(lambda p: httpx.post(server.url + "/v1/images/generations",
                                              json={"prompt": p}, timeout=60), prompts))
    assert all(r.status_code == 200 for r in rs)
    after = server.app.state.batcher.stats["by_kind"]["draw"]
    assert after["rows"] - before["rows"] == len(prompts)
    assert after["calls"] - before["calls"] < len(prompts)           # some shared a forward pass


@pytest.mark.slow
def test_graceful_shutdown_finishes_accepted_requests(pipe):
    srv = Server(create_app(pipe, ServeSettings(wait_ms=1000)))
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(httpx.post, srv.url + "/v1/images/generations",
                        json={"prompt": "a red circle"}, timeout=60)
        deadline = time.time() + 20                       # until accepted (loaded CI machines)
        while httpx.get(srv.url + "/health").json()["queue"]["draw"] == 0:
            assert time.time() < deadline and not fut.done(), "the request was never queued"
            time.sleep(0.01)
        srv.stop()                                        # it waits in the batch window
        assert fut.result().status_code == 200


# ---- the web page -------------------------------------------------------------------------------
def chromium():
    for b in ("/usr/bin/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if b and os.path.exists(b):
            d = shutil.which("chromedriver") or "/usr/bin/chromedriver"
            if os.path.exists(d):
                return b, d
    return None


@pytest.mark.slow
def test_page_upload_ask_generate_in_headless_chromium(server, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    found = chromium()
    if found is None:
        pytest.skip("Debian's chromium + chromium-driver are not installed "
                    "(scripts/setup.sh installs them when run as root)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--window-size=1200,1400", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(a)
    img = tmp_path / "scene.png"
    img.write_bytes(png(scene(0)))
    drv = webdriver.Chrome(service=Service(found[1]), options=opts)
    try:
        wait = WebDriverWait(drv, 60)
        drv.get(server.url + "/")
        wait.until(lambda d: d.find_element(By.ID, "model").text.startswith("unimm"))
        drv.find_element(By.ID, "upload").send_keys(str(img))
        wait.until(lambda d: (d.find_element(By.ID, "current-img").get_attribute("src") or "")
                   .startswith("data:image/png"))
        drv.find_element(By.ID, "question").send_keys("How many shapes are there?")
        drv.find_element(By.ID, "ask").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log li.answer"))
        drv.find_element(By.ID, "prompt").send_keys("a large red circle in the center")
        drv.find_element(By.ID, "generate").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#log img.result")
                   and len(d.find_elements(By.CSS_SELECTOR, "#log li")) >= 5)
        drv.find_element(By.ID, "instruction").send_keys("Make the circle blue.")
        drv.find_element(By.ID, "edit").click()
        wait.until(lambda d: "edited" in d.find_element(By.ID, "log").text)
        srcs = [e.get_attribute("src") for e in drv.find_elements(By.CSS_SELECTOR, "#log img.result")]
        assert len(srcs) >= 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
        assert not drv.find_elements(By.CSS_SELECTOR, "#log li.error")
        drv.execute_script("window.scrollTo(0, 0)")
        ARTIFACTS.mkdir(exist_ok=True)
        drv.save_screenshot(str(ARTIFACTS / "serve_page.png"))
    finally:
        drv.quit()
    assert (ARTIFACTS / "serve_page.png").stat().st_size > 1000

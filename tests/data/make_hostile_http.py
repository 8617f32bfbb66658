"""Writes hostile_http.jsonl: the hostile-request corpus that tests/test_hostile.py replays
against a live `unimm serve` (run this file to regenerate it; the output is deterministic).

Each line is one request: {"name", "method", "path", "headers", one body field ("json": a
JSON value sent as is, "raw": text sent verbatim, "raw_b64": bytes, "form" + "files":
multipart), "expect": "error" (a 4xx OpenAI error object), "ok" (2xx), "any" (no 5xx) or
"protocol" (a 4xx from uvicorn's HTTP parser, which refuses the request before the app sees it,
with its own plain-text body)},
and optionally "pad": {"char", "n"}: the body's "@PAD@" becomes char * n (huge bodies, built at
replay time instead of stored).
Images are built here (PIL) so that the corpus holds real PNG / JPEG / GIF / TIFF / ICO ...
bytes, truncated files and decompression bombs; the server's default limits apply.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

OUT = Path(__file__).with_name("hostile_http.jsonl")
CHAT, GEN, EDIT = "/v1/chat/completions", "/v1/images/generations", "/v1/images/edits"
rng = np.random.default_rng(0)


def enc(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def scene(size=32) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[size // 4: size // 2, size // 4: size // 2] = (220, 30, 30)
    return Image.fromarray(a)


def png_header_bomb(w: int, h: int) -> bytes:
    """A tiny valid-looking PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def durl(data: bytes, mime="image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def user(text="What color is the square?", url=None):
    content = [{"type": "text", "text": text}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": content}


GOOD_PNG = enc(scene(), "PNG")
GOOD_URL = durl(GOOD_PNG)
rows: list[dict] = []


def add(name, method="POST", path=CHAT, expect="error", headers=None, **body):
    rows.append({"name": name, "method": method, "path": path, "headers": headers or {},
                 **body, "expect": expect})


def chat(name, expect="error", **fields):
    add(name, json={"messages": [user(url=GOOD_URL)], **fields}, expect=expect)


def gen(name, expect="error", **fields):
    add(name, path=GEN, json={"prompt": "a red square", **fields}, expect=expect)


def image_chat(name, url, expect="error"):
    add(name, json={"messages": [user(url=url)]}, expect=expect)


def edit(name, form=None, files=None, expect="error"):
    f = {"prompt": "Make the square blue."} if form is None else form
    fl = {"image": ["scene.png", GOOD_PNG, "image/png"]} if files is None else files
    rows.append({"name": name, "method": "POST", "path": EDIT, "headers": {},
                 "form": f, "files": {k: [v[0], base64.b64encode(v[1]).decode(), v[2]]
                                      for k, v in fl.items()},
                 "expect": expect})


# ---- malformed bodies -----------------------------------------------------------------------
J = {"content-type": "application/json"}
for i, raw in enumerate(["", "{", "[", "null", "123", '"text"', "{'messages': []}",
                         '{"messages": [],}', '{"prompt": "a" "b"}', "\ufeff{}", "{}{}",
                         '{"prompt": NaN}', '{"prompt": "a", "n": Infinity}',
                         '{"prompt": "a", "n": -Infinity}', "true", '{"prompt": "\\ud800"}',
                         '{"prompt": "a\\u0000b"}']):
    add(f"malformed-json-{i}", path=GEN if i % 2 else CHAT, raw=raw, headers=J)
add("invalid-utf8-body", path=GEN, raw_b64=base64.b64encode(b'{"prompt": "\xff\xfe"}').decode(),
    headers=J)
add("deep-array-nesting", path=CHAT, raw="[" * 100000, headers=J)
add("deep-object-nesting", path=GEN, raw='{"a":' * 50000 + "1" + "}" * 50000, headers=J)
add("deep-nesting-in-field", path=CHAT, raw='{"messages": ' + "[" * 20000 + "]" * 20000 + "}",
    headers=J)
add("json-as-text-plain", path=GEN, raw='{"prompt": "a red square"}',
    headers={"content-type": "text/plain"}, expect="any")
add("form-urlencoded-to-json-endpoint", path=GEN, raw="prompt=a+red+square",
    headers={"content-type": "application/x-www-form-urlencoded"})
add("huge-key", path=GEN, json={"prompt": "a red square", "k" * 100000: 1})
add("duplicate-keys", path=GEN, raw='{"prompt": "a", "prompt": "a red square"}', headers=J,
    expect="any")

# ---- wrong types and out-of-range values: chat ----------------------------------------------
for name, v in [("string", "hello"), ("object", {"role": "user"}), ("number", 5), ("null", None),
                ("empty", []), ("list-of-strings", ["hi"]), ("list-of-numbers", [1, 2])]:
    add(f"chat-messages-{name}", json={"messages": v})
for name, m in [("role-tool", {"role": "tool", "content": "x"}),
                ("role-number", {"role": 1, "content": "x"}),
                ("role-missing", {"content": "x"}),
                ("content-number", {"role": "user", "content": 5}),
                ("content-object", {"role": "user", "content": {"type": "text", "text": "x"}}),
                ("part-unknown-type", {"role": "user", "content": [{"type": "audio", "audio": "x"}]}),
                ("part-missing-type", {"role": "user", "content": [{"text": "x"}]}),
                ("part-text-number", {"role": "user", "content": [{"type": "text", "text": 5}]}),
                ("part-url-number", {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": 5}}]}),
                ("part-url-string", {"role": "user", "content": [
                    {"type": "image_url", "image_url": GOOD_URL}]}),
                ("part-detail-bad", {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": GOOD_URL, "detail": "max"}}]})]:
    add(f"chat-{name}", json={"messages": [m]})
for name, fields in [("stream-string", {"stream": "yes"}), ("stream-number", {"stream": 1}),
                     ("stream-null", {"stream": None}), ("n-string", {"n": "2"}),
                     ("n-true", {"n": True}), ("n-two", {"n": 2}), ("n-zero", {"n": 0}),
                     ("max-tokens-string", {"max_tokens": "10"}), ("max-tokens-zero", {"max_tokens": 0}),
                     ("max-tokens-negative", {"max_tokens": -5}),
                     ("max-tokens-huge", {"max_tokens": 10**12}),
                     ("max-tokens-float", {"max_tokens": 1.5}), ("max-tokens-true", {"max_tokens": True}),
                     ("max-completion-tokens-huge", {"max_completion_tokens": 2**63}),
                     ("temperature-string", {"temperature": "1"}),
                     ("temperature-negative", {"temperature": -1}),
                     ("temperature-three", {"temperature": 3}),
                     ("temperature-true", {"temperature": True}),
                     ("temperature-list", {"temperature": [1]}),
                     ("temperature-huge", {"temperature": 1e308}),
                     ("top-p-zero", {"top_p": 0}), ("top-p-two", {"top_p": 2}),
                     ("top-p-string", {"top_p": "x"}), ("seed-negative", {"seed": -1}),
                     ("seed-2-32", {"seed": 2**32}), ("seed-2-64", {"seed": 2**64}),
                     ("seed-string", {"seed": "1"}), ("seed-float", {"seed": 1.5}),
                     ("seed-true", {"seed": True}), ("model-number", {"model": 123}),
                     ("user-number", {"user": 5}), ("unknown-field", {"tools": []}),
                     ("unknown-field-2", {"functions": [{"name": "x"}]}),
                     ("unknown-field-3", {"response_format": {"type": "json_object"}})]:
    chat(f"chat-{name}", **fields)
chat("chat-model-unknown", model="gpt-4o")
chat("chat-temperature-tiny", expect="ok", temperature=1e-300)
chat("chat-temperature-denormal", expect="ok", temperature=5e-324)
chat("chat-temperature-tiny-stream", expect="ok", temperature=1e-39, stream=True)
chat("chat-seed-max", expect="ok", seed=2**32 - 1, temperature=1.0)

# ---- conversation structure -----------------------------------------------------------------
add("conv-last-from-assistant", json={"messages": [user(url=GOOD_URL),
                                                   {"role": "assistant", "content": "red"}]})
add("conv-only-system", json={"messages": [{"role": "system", "content": "be nice"}]})
add("conv-no-image", json={"messages": [user()]})
add("conv-content-none", json={"messages": [{"role": "user", "content": None}]})
add("conv-content-empty-list", json={"messages": [{"role": "user", "content": []}]})
add("conv-text-whitespace", json={"messages": [user("   \n\t ", GOOD_URL)]})
add("conv-too-many-messages", json={"messages": [user("hi")] * 200 + [user(url=GOOD_URL)]})
add("conv-too-many-images", json={"messages": [user(url=GOOD_URL)] * 12})
add("conv-text-too-long", json={"messages": [user("why " * 2000, GOOD_URL)]})
add("conv-text-surrogate", json={"messages": [user("What is \ud800 this?", GOOD_URL)]})
add("conv-text-surrogate-stream", json={"messages": [user("\udfff", GOOD_URL)], "stream": True})
add("conv-text-nul", json={"messages": [user("What\u0000color?", GOOD_URL)]}, expect="any")
add("conv-text-rtl-emoji", json={"messages": [user("\u202e?roloc tahW 🎨", GOOD_URL)]},
    expect="any")
add("conv-text-zero-width-only", json={"messages": [user("\u200b\u200b", GOOD_URL)]},
    expect="any")
add("conv-image-in-system", json={"messages": [
    {"role": "system", "content": [{"type": "image_url", "image_url": {"url": GOOD_URL}}]},
    user("What color is it?")]}, expect="any")

# ---- images in data URLs ----------------------------------------------------------------------
small = scene()
for name, url in [
        ("http-url", "http://127.0.0.1:1/a.png"), ("https-url", "https://example.com/a.png"),
        ("file-url", "file:///etc/passwd"), ("ftp-url", "ftp://x/a.png"),
        ("relative-path", "../../etc/passwd"), ("empty-url", ""),
        ("data-no-comma", "data:image/png;base64"), ("data-not-base64", "data:image/png,abc"),
        ("data-text-plain", durl(b"hello", "text/plain")),
        ("data-svg", durl(b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml")),
        ("data-garbage-b64", "data:image/png;base64,!!!!@@@@"),
        ("data-b64-bad-padding", "data:image/png;base64,iVBORw0KGgo"),
        ("data-random-bytes", durl(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())),
        ("data-empty-payload", "data:image/png;base64,"),
        ("truncated-png", durl(GOOD_PNG[: len(GOOD_PNG) // 2])),
        ("png-signature-only", durl(GOOD_PNG[:8])),
        ("png-bomb-100k", durl(png_header_bomb(100000, 100000))),
        ("png-bomb-wide", durl(png_header_bomb(2**31 - 1, 1))),
        ("png-zero-size", durl(png_header_bomb(0, 0))),
        ("truncated-jpeg", durl(enc(small.resize((256, 256)), "JPEG")[:300], "image/jpeg")),
        ("tiff", durl(enc(small, "TIFF"), "image/tiff")),
        ("ico", durl(enc(small, "ICO"), "image/x-icon")),
        ("pdf-bytes", durl(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", "image/png")),
        ("rgba-transparent", durl(enc(Image.new("RGBA", (32, 32), (255, 0, 0, 0)), "PNG"))),
        ("gray-png", durl(enc(Image.new("L", (32, 32), 128), "PNG"))),
        ("huge-pixels", durl(enc(Image.new("RGB", (3000, 3000)), "PNG"))),
]:
    image_chat(f"image-{name}", url)
add("image-oversized-payload", json={"messages": [user(url="data:image/png;base64,@PAD@")]},
    pad={"char": "A", "n": 9 * 2**20})
for name, data, mime in [
        ("one-pixel", enc(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"), "image/png"),
        ("jpeg-q10", enc(small.resize((64, 64)), "JPEG", quality=10), "image/jpeg"),
        ("cmyk-jpeg", enc(small.convert("CMYK"), "JPEG"), "image/jpeg"),
        ("webp", enc(small, "WEBP"), "image/webp"),
        ("bmp", enc(small, "BMP"), "image/bmp"),
        ("gif-animated", enc(small, "GIF", save_all=True,
                             append_images=[small.rotate(90)] * 3), "image/gif"),
        ("palette-png", enc(small.convert("P"), "PNG"), "image/png"),
        ("png-16bit", enc(Image.fromarray(np.full((32, 32), 30000, np.uint16)), "PNG"),
         "image/png"),
        ("mime-mismatch", enc(small, "JPEG"), "image/png"),
        ("non-square", enc(small.resize((64, 16)), "PNG"), "image/png")]:
    image_chat(f"image-{name}", durl(data, mime), expect="any")

# ---- images: generations --------------------------------------------------------------------
for name, fields in [("n-string", {"n": "2"}), ("n-true", {"n": True}), ("n-zero", {"n": 0}),
                     ("n-negative", {"n": -3}), ("n-huge", {"n": 10**9}), ("n-float", {"n": 2.5}),
                     ("size-other", {"size": "64x64"}), ("size-garbage", {"size": "abc"}),
                     ("size-number", {"size": 32}), ("format-url", {"response_format": "url"}),
                     ("format-number", {"response_format": 1}),
                     ("guidance-negative", {"guidance": -1}), ("guidance-huge", {"guidance": 21}),
                     ("guidance-string", {"guidance": "abc"}),
                     ("guidance-list", {"guidance": [1.5]}),
                     ("temperature-negative", {"temperature": -0.5}),
                     ("temperature-string", {"temperature": "hot"}),
                     ("seed-negative", {"seed": -1}), ("seed-huge", {"seed": 2**64}),
                     ("seed-bool", {"seed": False}), ("model-unknown", {"model": "dall-e-3"}),
                     ("unknown-field", {"quality": "hd"}), ("unknown-field-2", {"style": "vivid"}),
                     ("prompt-number", {"prompt": 5}), ("prompt-null", {"prompt": None}),
                     ("prompt-list", {"prompt": ["a", "b"]}), ("prompt-empty", {"prompt": ""}),
                     ("prompt-spaces", {"prompt": "   "}), ("prompt-long", {"prompt": "x" * 5000}),
                     ("prompt-surrogate", {"prompt": "a red \ud800 square"}),
                     ("prompt-lone-low-surrogate", {"prompt": "\udc00"})]:
    gen(f"gen-{name}", **fields)
add("gen-prompt-missing", path=GEN, json={"n": 1})
gen("gen-temperature-tiny", expect="ok", temperature=1e-300)
gen("gen-temperature-denormal", expect="ok", temperature=5e-324, seed=3)
gen("gen-prompt-nul-and-emoji", expect="any", prompt="a red square \u0000 🟥")
gen("gen-prompt-out-of-world", expect="any", prompt="a photo of a dog on a beach")

# ---- edits (multipart) ------------------------------------------------------------------------
P = {"prompt": "Make the square blue."}
edit("edit-no-image", files={})
edit("edit-no-prompt", form={})
edit("edit-two-images", files={"image": ["a.png", GOOD_PNG, "image/png"]},
     form={**P, "image": "second"})
edit("edit-empty-file", files={"image": ["a.png", b"", "image/png"]})
edit("edit-text-file", files={"image": ["a.txt", b"hello world", "text/plain"]})
edit("edit-path-traversal-name", files={"image": ["../../../etc/passwd", GOOD_PNG, "image/png"]},
     expect="any")
edit("edit-absolute-name", files={"image": ["/etc/shadow", GOOD_PNG, "image/png"]}, expect="any")
edit("edit-weird-name", files={"image": ["a\u202egnp.exe", GOOD_PNG, "image/png"]}, expect="any")
edit("edit-unknown-field", form={**P, "mask": "x"})
edit("edit-n-string", form={**P, "n": "abc"})
edit("edit-n-zero", form={**P, "n": "0"})
edit("edit-n-huge", form={**P, "n": "1000000"})
edit("edit-seed-negative", form={**P, "seed": "-1"})
edit("edit-seed-huge", form={**P, "seed": str(2**64)})
edit("edit-guidance-nan", form={**P, "guidance": "nan"})
edit("edit-guidance-inf", form={**P, "guidance": "inf"})
edit("edit-temperature-inf", form={**P, "temperature": "Infinity"})
edit("edit-temperature-tiny", form={**P, "temperature": "1e-300"}, expect="ok")
edit("edit-format-url", form={**P, "response_format": "url"})
edit("edit-size-other", form={**P, "size": "1024x1024"})
edit("edit-model-unknown", form={**P, "model": "other"})
edit("edit-prompt-long", form={"prompt": "y" * 5000})
# invalid UTF-8 in a form field: decoded with replacement characters, like any form server
edit("edit-prompt-surrogate", form={"prompt": "Make it \ud800 blue."}, expect="any")
edit("edit-png-bomb", files={"image": ["b.png", png_header_bomb(100000, 100000), "image/png"]})
edit("edit-truncated-png", files={"image": ["t.png", GOOD_PNG[:40], "image/png"]})
edit("edit-rgba-transparent", files={"image": ["t.png", enc(Image.new("RGBA", (32, 32)), "PNG"),
                                              "image/png"]})
edit("edit-tiff", files={"image": ["t.tiff", enc(small, "TIFF"), "image/tiff"]})
add("edit-json-body", path=EDIT, json={"prompt": "Make it blue.", "image": GOOD_URL})
add("edit-urlencoded", path=EDIT, raw="prompt=Make+it+blue",
    headers={"content-type": "application/x-www-form-urlencoded"})
add("edit-broken-multipart", path=EDIT, raw="--xyz\r\nContent-Disposition: form-data\r\n\r\n",
    headers={"content-type": "multipart/form-data; boundary=xyz"})
add("edit-multipart-no-boundary", path=EDIT, raw="whatever",
    headers={"content-type": "multipart/form-data"})

# ---- HTTP level ---------------------------------------------------------------------------------
add("get-on-post-endpoint", method="GET", path=CHAT)
add("put-on-post-endpoint", method="PUT", path=GEN, json={"prompt": "a"})
add("delete-models", method="DELETE", path="/v1/models")
add("unknown-route", method="GET", path="/v1/embeddings")
add("unknown-route-post", path="/v1/completions", json={"prompt": "hi"})
add("static-traversal", method="GET", path="/static/../../../../etc/passwd")
add("static-traversal-encoded", method="GET", path="/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd")
add("static-traversal-double-encoded", method="GET", path="/static/%252e%252e/etc/passwd")
add("static-missing", method="GET", path="/static/nothing.js")
add("static-backslash", method="GET", path="/static/..%5c..%5cetc%5cpasswd")
add("route-unicode", method="GET", path="/v1/%F0%9F%8E%A8")
add("route-nul", method="GET", path="/v1/models%00.json", expect="any")
add("query-garbage", method="GET", path="/health?%zz=%%&a=" + "x" * 2000, expect="any")
add("head-health", method="HEAD", path="/health", expect="any")
add("options-chat", method="OPTIONS", path=CHAT)
add("chunked-no-length", path=GEN, raw='{"prompt": "a"}', headers={**J, "x-chunked": "1"})
add("oversized-body", path=GEN, raw='{"prompt": "@PAD@"}', headers=J, pad={"char": "a", "n": 9 * 2**20})
add("content-length-lies-high", path=GEN, raw='{"prompt": "a red square"}',
    headers={**J, "x-content-length": "99999999999"})
add("content-length-negative", path=GEN, raw='{"prompt": "a"}',
    headers={**J, "x-content-length": "-1"}, expect="protocol")
add("content-length-garbage", path=GEN, raw='{"prompt": "a"}',
    headers={**J, "x-content-length": "ten"}, expect="protocol")
add("content-type-missing", path=GEN, raw='{"prompt": "a red square"}', expect="any")
add("content-type-json-charset-latin1", path=GEN, raw='{"prompt": "a red square"}',
    headers={"content-type": "application/json; charset=latin-1"}, expect="any")


if __name__ == "__main__":
    with open(OUT, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} requests to {OUT}")

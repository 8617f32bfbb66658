"""The FastAPI app: OpenAI-compatible endpoints and the web page, a thin adapter over Pipeline.

    POST /v1/chat/completions   text + image_url (data URL) parts -> text; `stream` = SSE
    POST /v1/images/generations prompt, n, size, seed, guidance -> b64_json PNGs
    POST /v1/images/edits       multipart: image + prompt -> b64_json PNGs
    GET  /v1/models, /health, /openapi.json, / (the page)

Notable choices:
- Conversations: a model turn sees one image and one question. The question is the last user
  message's text; the image is the most recent image anywhere in the conversation, so a
  follow-up without an image is about the last one shown. Earlier text is not fed to the model:
  it was trained on single turns and answers worse with a transcript in front of the question.
- Errors are OpenAI error objects, `{"error": {"message", "type", "param", "code"}}`, with 400
  for bad input (unknown fields and wrong types included), 404 for unknown models and routes,
  411/413 for a missing or too large body, 503 + Retry-After when the queue is full, 504 when
  a request outlives its timeout. The handler of last resort answers 500 without details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.images import ImageError
from ..paradigms.sampling import SamplingConfig
from ..pipeline import MAX_PROMPT_CHARS, InputError, Pipeline
from .batcher import Batcher, Overloaded
from .inputs import decode_data_url, png_b64, read_image
from .schemas import (
    EDIT_FIELDS,
    ChatChoice,
    ChatMessageOut,
    ChatRequest,
    ChatResponse,
    ErrorResponse,
    ImageData,
    ImageRequest,
    ImagesResponse,
    ModelCard,
    ModelList,
    Usage,
)
from .settings import ServeSettings

log = logging.getLogger("unimm.serve")
STATIC = Path(__file__).parent / "static"
ERRORS = {c: {"model": ErrorResponse} for c in (400, 404, 413, 503, 504)}


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_json(status, message, type_="invalid_request_error", param=None, code=None,
               headers=None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type_, "param": param,
                                   "code": code}}, status_code=status, headers=headers)


class BodyLimit:
    """Refuse request bodies over the limit from their Content-Length, before reading them;
    a POST without one (chunked upload) is refused with 411, so nothing unbounded is read."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH"):
            headers = dict(scope["headers"])
            length = headers.get(b"content-length")
            if length is None:
                resp = error_json(411, "a Content-Length header is required")
                return await resp(scope, receive, send)
            if not length.isdigit() or int(length) > self.max_bytes:
                resp = error_json(413, f"the request body is {length.decode(errors='replace')} "
                                  f"bytes; at most {self.max_bytes} are accepted",
                                  code="body_too_large")
                return await resp(scope, receive, send)
        await self.app(scope, receive, send)


def create_app(pipe: Pipeline, settings: ServeSettings = ServeSettings(),
               model_id: str | None = None) -> FastAPI:
    s = settings
    model_id = model_id or f"unimm-{pipe.cfg.name}"
    created = int(time.time())
    batcher = Batcher(pipe, s.max_batch, s.wait_ms, s.queue_size)
    size = pipe.image_size
    gray = pipe.accepts_gray

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.close(drain_s=s.request_timeout_s)          # graceful: finish accepted work

    app = FastAPI(title="unimm", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible serving of a unimm model (sees and draws).")
    app.state.batcher, app.state.settings, app.state.pipe = batcher, s, pipe
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)

    # ---- errors ---------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api(_, e: ApiError):
        return error_json(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_, e: RequestValidationError):
        errs = e.errors()
        parts = [f"{'.'.join(str(x) for x in er.get('loc', ())[1:]) or 'body'}: {er.get('msg')}"
                 for er in errs[:5]]
        first = errs[0] if errs else {}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return error_json(400, "; ".join(parts) or "invalid request", param=param,
                          code=first.get("type"))

    @app.exception_handler(InputError)
    @app.exception_handler(ImageError)
    async def _bad_input(_, e: ValueError):
        return error_json(400, str(e))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, e: StarletteHTTPException):
        return error_json(e.status_code, str(e.detail),
                          "not_found_error" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _crash(_, e: Exception):
        log.exception("unexpected error")
        return error_json(500, "internal server error", "server_error")

    # ---- helpers ------------------------------------------------------------------------------
    def check_model(name: Optional[str]) -> None:
        if name not in (None, "", model_id, "unimm"):
            raise ApiError(404, f"model {name!r} is not served here; served: {model_id}",
                           param="model", code="model_not_found")

    def check_text(text: str, what: str) -> str:
        if not text.strip():
            raise ApiError(400, f"{what} is empty; give some text", param=what)
        if len(text) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"{what} has {len(text)} characters; at most "
                           f"{MAX_PROMPT_CHARS} are accepted", param=what)
        try:
            pipe.count_tokens(text, what)            # not valid Unicode: refused here
        except InputError as e:
            raise ApiError(400, str(e), param=what) from None
        return text

    def check_n(n: int) -> None:
        if not 1 <= n <= s.max_n:
            raise ApiError(400, f"n must lie in [1, {s.max_n}], got {n}", param="n")

    def check_size(value: Optional[str]) -> None:
        if value not in (None, "", "auto", f"{size}x{size}"):
            raise ApiError(400, f"size {value!r}: this model draws {size}x{size} images; "
                           f"accepted: \"auto\" or \"{size}x{size}\"", param="size")

    def sampling(temperature=None, top_p=None) -> SamplingConfig:
        d = pipe.default_sampling
        try:
            return SamplingConfig(d.temperature if temperature is None else temperature, d.top_k,
                                  d.top_p if top_p is None else top_p)
        except (TypeError, ValueError) as e:
            raise ApiError(400, f"bad sampling option: {e}") from None

    def image_from(data: bytes, what: str):
        try:
            return read_image(data, size, s.max_image_pixels, gray, what)
        except ImageError as e:
            raise ApiError(400, str(e), param=what, code="invalid_image") from None

    async def wait(fut: asyncio.Future):
        try:
            return await asyncio.wait_for(fut, s.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {s.request_timeout_s:g} s",
                           "timeout_error", code="timeout") from None
        except (InputError, ImageError) as e:
            raise ApiError(400, str(e)) from None

    def submit(kind, rows, args, key, seeded, on_token=None) -> asyncio.Future:
        try:
            return batcher.submit(kind, rows, args, key, seeded, on_token)
        except Overloaded as e:
            raise ApiError(503, f"{e}; retry after {s.retry_after_s} s", "server_overloaded",
                           code="overloaded",
                           headers={"Retry-After": str(s.retry_after_s)}) from None

    def conversation(req: ChatRequest):
        """(latest image, last user question, prompt characters) of a conversation."""
        if len(req.messages) > s.max_messages:
            raise ApiError(400, f"{len(req.messages)} messages; at most {s.max_messages}",
                           param="messages")
        urls = [(i, p.image_url.url) for i, m in enumerate(req.messages)
                if isinstance(m.content, list) for p in m.content if p.type == "image_url"]
        if len(urls) > s.max_images:
            raise ApiError(400, f"{len(urls)} images in the conversation; at most "
                           f"{s.max_images}", param="messages")
        users = [m for m in req.messages if m.role == "user"]
        if not users or req.messages[-1].role != "user":
            raise ApiError(400, "the last message must come from the user", param="messages")
        c = users[-1].content
        text = c if isinstance(c, str) else " ".join(p.text for p in (c or []) if p.type == "text")
        question = check_text(text or "", "messages")
        if not urls:
            raise ApiError(400, "this model answers questions about an image: include an "
                           "image_url part (a data URL) in the conversation", param="messages")
        i, url = urls[-1]
        try:
            data = decode_data_url(url, s.max_body_bytes)
        except ImageError as e:
            raise ApiError(400, str(e), param=f"messages.{i}.content", code="invalid_image") from None
        return image_from(data, "image_url"), question.strip()

    # ---- endpoints ----------------------------------------------------------------------------
    @app.post("/v1/chat/completions", response_model=ChatResponse, responses=ERRORS)
    async def chat(req: ChatRequest):
        check_model(req.model)
        image, question = conversation(req)
        max_new = req.max_completion_tokens or req.max_tokens or s.max_tokens
        if max_new > s.max_tokens:
            raise ApiError(400, f"max_tokens {max_new} is over this server's limit of "
                           f"{s.max_tokens}", param="max_tokens")
        sam = sampling(req.temperature, req.top_p)
        args = dict(max_new=max_new, sampling=sam, seed=req.seed)
        key = (max_new, sam)
        cid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            out = await wait(submit("answer", [(image, question)], args, key, req.seed is not None))
            text = out[0]
            n_out = len(pipe.count_tokens(text)) if text else 0
            n_in = len(pipe.count_tokens(question)) + pipe.vocab.n_image
            return ChatResponse(id=cid, created=now, model=model_id, usage=Usage(
                prompt_tokens=n_in, completion_tokens=n_out, total_tokens=n_in + n_out),
                choices=[ChatChoice(message=ChatMessageOut(content=text),
                                    finish_reason="length" if n_out >= max_new else "stop")])
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        fut = submit("answer", [(image, question)], args, key, req.seed is not None,
                     on_token=lambda _row, tok: loop.call_soon_threadsafe(events.put_nowait, tok))
        fut.add_done_callback(lambda f: events.put_nowait(None))
        return StreamingResponse(stream_chat(events, fut, cid, now), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    async def stream_chat(events: asyncio.Queue, fut: asyncio.Future, cid: str, now: int):
        """SSE: a role chunk, one content chunk per decoded piece of text, the finish chunk,
        [DONE]. Whatever goes wrong after the first chunk (a timeout, the batch failing, a
        bug) ends the stream with an OpenAI error event, then [DONE]: never a cut connection."""
        def chunk(delta: dict, finish=None) -> str:
            return "data: " + json.dumps({
                "id": cid, "object": "chat.completion.chunk", "created": now, "model": model_id,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

        def error_event(message: str, type_: str, code: str | None = None) -> str:
            return "data: " + json.dumps({"error": {"message": message, "type": type_,
                                                    "param": None, "code": code}}) + "\n\n"

        text = pipe.text_stream()
        yield chunk({"role": "assistant", "content": ""})
        deadline = loop_time() + s.request_timeout_s
        try:
            while True:
                try:
                    tok = await asyncio.wait_for(events.get(), max(0.0, deadline - loop_time()))
                except asyncio.TimeoutError:
                    fut.cancel()
                    raise ApiError(504, f"the request took longer than "
                                   f"{s.request_timeout_s:g} s", "timeout_error",
                                   code="timeout") from None
                if tok is None:
                    break
                piece = text.push(tok)
                if piece:
                    yield chunk({"content": piece})
            rest = text.finish(fut.result()[0])              # raises what the batch raised
            if rest:
                yield chunk({"content": rest})
            yield chunk({}, "stop")
        except ApiError as e:
            yield error_event(e.message, e.type, e.code)
        except (InputError, ImageError, Overloaded) as e:
            yield error_event(str(e), "invalid_request_error")
        except Exception:                                    # noqa: BLE001 - told, not cut
            log.exception("streamed request failed")
            yield error_event("internal server error", "server_error")
        yield "data: [DONE]\n\n"

    async def draw(prompt: str, n: int, image, seed, guidance, temperature) -> ImagesResponse:
        check_n(n)
        check_text(prompt, "prompt")
        sam = sampling(temperature)
        args = dict(guidance=guidance, sampling=sam, seed=seed)
        key = ("edit" if image is not None else "t2i", guidance, sam)
        out = await wait(submit("draw", [(prompt, image)] * n, args, key, seed is not None))
        return ImagesResponse(created=int(time.time()),
                              data=[ImageData(b64_json=png_b64(im)) for im in out])

    @app.post("/v1/images/generations", response_model=ImagesResponse, responses=ERRORS)
    async def generations(req: ImageRequest):
        check_model(req.model)
        check_size(req.size)
        return await draw(req.prompt, req.n, None, req.seed, req.guidance, req.temperature)

    @app.post("/v1/images/edits", response_model=ImagesResponse, responses=ERRORS)
    async def edits(request: Request,
                    image: UploadFile = File(..., description="PNG / JPEG / WEBP / GIF / BMP"),
                    prompt: str = Form(..., min_length=1, max_length=MAX_PROMPT_CHARS),
                    model: Optional[str] = Form(None), n: int = Form(1),
                    size: Optional[str] = Form(None),
                    response_format: Optional[str] = Form(None),
                    seed: Optional[int] = Form(None, ge=0, lt=2**32),
                    guidance: Optional[float] = Form(None, ge=0, le=20),
                    temperature: Optional[float] = Form(None, ge=0, le=2),
                    user: Optional[str] = Form(None)):
        form = await request.form()
        unknown = sorted(set(form.keys()) - set(EDIT_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field(s) {unknown}; accepted: {', '.join(EDIT_FIELDS)}",
                           param=unknown[0], code="extra_forbidden")
        if len(form.getlist("image")) != 1:
            raise ApiError(400, "give exactly one image", param="image")
        if response_format not in (None, "", "b64_json"):
            raise ApiError(400, "response_format: only \"b64_json\" is served (no URLs)",
                           param="response_format")
        check_model(model)
        check_size(size)
        pixels = image_from(await image.read(), "image")
        return await draw(prompt, n, pixels, seed, guidance, temperature)

    @app.get("/v1/models", response_model=ModelList)
    async def models():
        return ModelList(data=[ModelCard(id=model_id, created=created)])

    @app.get("/health")
    async def health():
        return {"status": "shutting_down" if batcher.closed else "ok", "model": model_id,
                "paradigm": pipe.cfg.paradigm, "image_size": size,
                "queue": dict(batcher.pending), "batches": batcher.stats}

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def loop_time() -> float:
    return asyncio.get_running_loop().time()

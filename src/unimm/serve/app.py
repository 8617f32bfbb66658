"""The FastAPI app: OpenAI-compatible endpoints and the web page, a thin adapter over Pipeline.

    POST /v1/chat/completions   text + image_url (data URL) parts -> text; `stream` = SSE
    POST /v1/images/generations prompt, n, size, seed, guidance -> b64_json PNGs
    POST /v1/images/edits       multipart: image + prompt -> b64_json PNGs
    GET  /v1/models, /health, /openapi.json, / (the page)

Layout: `create_app` wires one `Service` (deps.py: pipeline, settings, batcher, model id) into
app.state, the routers of routes/ (chat, images, models + health, page), the error handlers of
errors.py and the body limit below.

Notable choices:
- Errors are OpenAI error objects, `{"error": {"message", "type", "param", "code"}}`, with 400
  for bad input (unknown fields and wrong types included), 404 for unknown models and routes,
  411/413 for a missing or too large body, 503 + Retry-After when the queue is full, 504 when
  a request outlives its timeout. The handler of last resort answers 500 without details.
- Shutdown is graceful: the lifespan stops the batcher only after the accepted work is done
  (up to the request timeout).
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from ..pipeline import Pipeline
from .batcher import Batcher
from .deps import Service
from .errors import error_json, install_handlers
from .routes import ROUTERS
from .routes.page import STATIC
from .settings import ServeSettings


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
    batcher = Batcher(pipe, s.max_batch, s.wait_ms, s.queue_size)
    svc = Service(pipe, s, batcher, model_id or f"unimm-{pipe.name}", int(time.time()))

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.close(drain_s=s.request_timeout_s)          # graceful: finish accepted work

    app = FastAPI(title="unimm", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible serving of a unimm model (sees and draws).")
    app.state.service = svc
    app.state.batcher, app.state.settings, app.state.pipe = batcher, s, pipe
    app.add_middleware(BodyLimit, max_bytes=s.max_body_bytes)
    install_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app

"""What the routes share: one `Service` per app (the pipeline, the settings, the batcher, the
served model id) with the checks and batcher calls more than one route makes. A route takes it
as a parameter annotated `ServiceDep` (FastAPI's `Depends`, read from `app.state`), so the
routers are module-level and hold no per-app closures.

The server sees the model only through `Pipeline`'s public surface: `answer` / `draw` (in the
batcher), `count_tokens`, `text_stream`, `default_sampling` (images), `default_text_sampling`
(answers) and the model's description
(`name`, `paradigm_name`, `image_size`, `accepts_gray`, `image_tokens`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated, Optional

from fastapi import Depends, Request

from ..data.images import ImageError
from ..paradigms.sampling import SamplingConfig
from ..pipeline import MAX_PROMPT_CHARS, InputError, Pipeline
from .batcher import Batcher, Overloaded
from .errors import ApiError
from .inputs import read_image
from .settings import ServeSettings


@dataclass
class Service:
    pipe: Pipeline
    settings: ServeSettings
    batcher: Batcher
    model_id: str
    created: int                      # when the app was made (the model card's `created`)

    def check_model(self, name: Optional[str]) -> None:
        if name not in (None, "", self.model_id, "unimm"):
            raise ApiError(404, f"model {name!r} is not served here; served: {self.model_id}",
                           param="model", code="model_not_found")

    def check_text(self, text: str, what: str) -> str:
        if not text.strip():
            raise ApiError(400, f"{what} is empty; give some text", param=what)
        if len(text) > MAX_PROMPT_CHARS:
            raise ApiError(400, f"{what} has {len(text)} characters; at most "
                           f"{MAX_PROMPT_CHARS} are accepted", param=what)
        try:
            self.pipe.count_tokens(text, what)       # not valid Unicode: refused here
        except InputError as e:
            raise ApiError(400, str(e), param=what) from None
        return text

    def sampling(self, temperature=None, top_p=None, text: bool = False) -> SamplingConfig:
        """A request's sampling: unset options take the run's image defaults, or for answers
        (`text`) Pipeline.answer's greedy default (a released checkpoint's image preset
        samples at temperature 1; its answers, like ours, are greedy unless asked)."""
        d = self.pipe.default_text_sampling if text else self.pipe.default_sampling
        try:
            return SamplingConfig(d.temperature if temperature is None else temperature, d.top_k,
                                  d.top_p if top_p is None else top_p)
        except (TypeError, ValueError) as e:
            raise ApiError(400, f"bad sampling option: {e}") from None

    def image_from(self, data: bytes, what: str):
        try:
            return read_image(data, self.pipe.image_size, self.settings.max_image_pixels,
                              self.pipe.accepts_gray, what)
        except ImageError as e:
            raise ApiError(400, str(e), param=what, code="invalid_image") from None

    def submit(self, kind, rows, args, key, seeded, on_token=None) -> asyncio.Future:
        s = self.settings
        try:
            return self.batcher.submit(kind, rows, args, key, seeded, on_token)
        except Overloaded as e:
            raise ApiError(503, f"{e}; retry after {s.retry_after_s} s", "server_overloaded",
                           code="overloaded",
                           headers={"Retry-After": str(s.retry_after_s)}) from None

    async def wait(self, fut: asyncio.Future):
        timeout = self.settings.request_timeout_s
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took longer than {timeout:g} s",
                           "timeout_error", code="timeout") from None
        except (InputError, ImageError) as e:
            raise ApiError(400, str(e)) from None


def service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(service)]

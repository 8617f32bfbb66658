"""POST /v1/images/generations (prompt, n, size, seed, guidance -> b64_json PNGs) and
POST /v1/images/edits (multipart: image + prompt -> b64_json PNGs).

Both end in one batcher job of n `Pipeline.draw` rows; jobs with the same options may share a
call, a seeded job runs alone so that its seed reproduces. The edit form's fields are checked
by name (a misspelt field is a 400, as in the JSON bodies) since FastAPI ignores extra form
fields.
"""

from __future__ import annotations

import time
from typing import Optional

from fastapi import APIRouter, File, Form, Request, UploadFile

from ...pipeline import MAX_PROMPT_CHARS
from ..deps import Service, ServiceDep
from ..errors import ERRORS, ApiError
from ..inputs import png_b64
from ..schemas import EDIT_FIELDS, ImageData, ImageRequest, ImagesResponse

router = APIRouter()


@router.post("/v1/images/generations", response_model=ImagesResponse, responses=ERRORS)
async def generations(req: ImageRequest, svc: ServiceDep):
    svc.check_model(req.model)
    check_size(svc, req.size)
    return await draw(svc, req.prompt, req.n, None, req.seed, req.guidance, req.temperature)


@router.post("/v1/images/edits", response_model=ImagesResponse, responses=ERRORS)
async def edits(request: Request, svc: ServiceDep,
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
    svc.check_model(model)
    check_size(svc, size)
    pixels = svc.image_from(await image.read(), "image")
    return await draw(svc, prompt, n, pixels, seed, guidance, temperature)


async def draw(svc: Service, prompt: str, n: int, image, seed, guidance,
               temperature) -> ImagesResponse:
    check_n(svc, n)
    svc.check_text(prompt, "prompt")
    sam = svc.sampling(temperature)
    args = dict(guidance=guidance, sampling=sam, seed=seed)
    key = ("edit" if image is not None else "t2i", guidance, sam)
    out = await svc.wait(svc.submit("draw", [(prompt, image)] * n, args, key, seed is not None))
    return ImagesResponse(created=int(time.time()),
                          data=[ImageData(b64_json=png_b64(im)) for im in out])


def check_n(svc: Service, n: int) -> None:
    if not 1 <= n <= svc.settings.max_n:
        raise ApiError(400, f"n must lie in [1, {svc.settings.max_n}], got {n}", param="n")


def check_size(svc: Service, value: Optional[str]) -> None:
    size = svc.pipe.image_size
    if value not in (None, "", "auto", f"{size}x{size}"):
        raise ApiError(400, f"size {value!r}: this model draws {size}x{size} images; "
                       f"accepted: \"auto\" or \"{size}x{size}\"", param="size")

"""GET /: the web page (plain HTML/JS/CSS under serve/static, no CDN); `create_app` mounts
STATIC at /static for its scripts and styles."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).parent.parent / "static"

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC / "index.html")

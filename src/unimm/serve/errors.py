"""OpenAI error objects: the exception routes raise, its JSON body, and the app's handlers.

Every refusal is `{"error": {"message", "type", "param", "code"}}`: FastAPI's own validation
errors (unknown fields, wrong types) are rewritten into that shape as 400s naming the first bad
field, the pipeline's input errors are 400s, unknown routes 404s. The handler of last resort
answers 500 without details; the traceback goes to the log.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.images import ImageError
from ..pipeline import InputError
from .schemas import ErrorResponse

log = logging.getLogger("unimm.serve")
ERRORS = {c: {"model": ErrorResponse} for c in (400, 404, 413, 503, 504)}   # for the OpenAPI


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


def install_handlers(app: FastAPI) -> None:
    """Every exception a request can raise -> an OpenAI error object."""

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

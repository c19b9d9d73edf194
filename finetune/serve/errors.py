"""OpenAI-style error responses: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status
OpenAI uses, for every way a request can fail; a bug answers 500 with a one-line message, never a
traceback (that goes to the server log)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

log = logging.getLogger("finetune.serve")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status_code=status)


def field_path(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "role") → "messages[0].role"; None for the body as a whole."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or None


def validation_message(error: dict[str, Any]) -> tuple[str, str | None]:
    """One pydantic error as (message naming the field, param)."""
    if error.get("type") == "json_invalid":
        return f"request body is not valid JSON: {error.get('ctx', {}).get('error', error['msg'])}", None
    param = field_path(tuple(error.get("loc", ())))
    msg = error["msg"].removeprefix("Value error, ")
    return f"{param or 'request body'}: {msg}", param


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return _response(exc.status, exc.message, exc.param, exc.code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = validation_message(exc.errors()[0])
        return _response(400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        message = (
            exc.detail if exc.status_code != 404 else f"{request.method} {request.url.path}: no such route"
        )
        return _response(exc.status_code, str(message))

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _response(500, f"internal error: {type(exc).__name__}: {exc}")

"""Error responses: every failure leaves the API as {"detail": {"code", "message"}}.

The handlers here cover ocrq's own errors (OcrError and its subclasses), Starlette's HTTP errors
(unknown routes, wrong methods) and FastAPI's request validation. Any other exception becomes a
500 with code internal_error, whose message hides the exception text unless OCRQ_DEBUG is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import OcrError
from core.logging import get_logger

log = get_logger(__name__)

# Seconds a client should wait before retrying after a 503 (a dependency failed for now).
RETRY_AFTER_S = 5
# The detail of the HTTPException FastAPI raises when a JSON body cannot be parsed at all.
_FASTAPI_BODY_PARSE_ERROR = "There was an error parsing the body"
# Codes for errors raised by Starlette itself, keyed by HTTP status.
_HTTP_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "file_too_large",
    415: "unsupported_media_type",
}


class ApiError(OcrError):
    """An error raised by the API layer itself, with its HTTP status and optional headers."""

    def __init__(
        self,
        http_status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.http_status = http_status
        self.headers = dict(headers or {})


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """Return the JSON body shared by every error response."""
    return {"detail": {"code": code, "message": message}}


def error_response(
    http_status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Build the JSON response for one error."""
    return JSONResponse(error_body(code, message), status_code=http_status, headers=headers)


def install_error_handlers(app: FastAPI, *, debug: bool) -> None:
    """Register the handlers that give every error the {"detail": {"code", "message"}} body."""

    async def handle_ocr_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, OcrError)
        headers = dict(exc.headers) if isinstance(exc, ApiError) else {}
        if exc.http_status == 503:
            # A dependency (database, storage, broker) failed for now; the client may retry.
            headers.setdefault("Retry-After", str(RETRY_AFTER_S))
        if exc.http_status >= 500:
            log.warning("request.failed", code=exc.code, status=exc.http_status, error=exc.message)
        return error_response(exc.http_status, exc.code, exc.message, headers)

    async def handle_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_PARSE_ERROR:
            # FastAPI returns 400 when parsing a JSON body raises something other than a decode
            # error, such as RecursionError on deeply nested brackets.
            message = "The request body is not valid JSON: it is nested too deeply."
            return error_response(422, "invalid_json", message)
        code = _HTTP_STATUS_CODES.get(exc.status_code, "http_error")
        if exc.status_code == 404:
            message = f"no route matches {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return error_response(exc.status_code, code, message, exc.headers)

    async def handle_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        decode_errors = [error for error in errors if error.get("type") == "json_invalid"]
        if decode_errors:
            reason = decode_errors[0].get("ctx", {}).get("error", "it cannot be decoded")
            message = f"The request body is not valid JSON: {reason}."
            return error_response(422, "invalid_json", message)
        message = describe_validation_errors(errors)
        return error_response(422, "invalid_request", message)

    async def handle_unexpected_error(request: Request, exc: Exception) -> Response:
        log.exception("request.failed", code="internal_error", status=500)
        message = "internal server error; the request id in the logs identifies the failure"
        if debug:
            message = f"{type(exc).__name__}: {exc}"
        return error_response(500, "internal_error", message)

    app.add_exception_handler(OcrError, handle_ocr_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(Exception, handle_unexpected_error)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Join FastAPI's validation errors into one sentence naming each invalid field."""
    parts = []
    for error in errors:
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'request'}: {error.get('msg', 'invalid value')}")
    return "invalid request: " + "; ".join(parts)

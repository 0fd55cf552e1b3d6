"""Request middleware: a request id bound into structlog's context, one log line and one metrics
count per request.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.metrics import RequestMetrics

REQUEST_ID_HEADER = "x-request-id"
# A client-supplied id is kept only when it is short and plain, so it is safe to log and echo.
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

log = structlog.get_logger(__name__)


class RequestContextMiddleware:
    """Bind request_id for the request's logs, echo it as X-Request-ID, and count the request."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        request_id = _request_id(scope)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            await send(message)

        structlog.contextvars.bind_contextvars(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration_s = time.perf_counter() - started
            route = _route_template(scope)
            self.metrics.record(scope["method"], route, status, duration_s)
            log.info(
                "request.finished",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=int(duration_s * 1000),
            )
            structlog.contextvars.unbind_contextvars("request_id")


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", []):
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.match(candidate):
                return candidate
    return uuid.uuid4().hex


def _route_template(scope: Scope) -> str:
    """Return the matched route's path template, so ids do not explode the metric labels."""
    path: object = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"

"""A webhook receiver for tests: an HTTP server on 127.0.0.1 that verifies every delivery.

Each POST is checked with client.webhooks.verify_webhook. A delivery that fails verification
gets 400; one that passes gets the next status of `script`, or 200 once the script is used up.
The clock that judges webhook-timestamp can be replaced, so tests that move a fake clock forward
verify against the same time the sender used.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from client.webhooks import WebhookVerificationError, verify_webhook


@dataclass(frozen=True)
class ReceivedWebhook:
    """One POST as the receiver saw it, with its verification outcome and the status it sent."""

    headers: dict[str, str]
    body: bytes
    verified: bool
    error: str | None
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


@dataclass
class WebhookReceiver:
    """The receiver's state; `received` lists every POST in arrival order."""

    secret: str
    port: int
    script: list[int] = field(default_factory=list)
    clock_s: Callable[[], float] = time.time
    received: list[ReceivedWebhook] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[ReceivedWebhook]:
        return [item for item in self.received if item.verified and 200 <= item.answered < 300]

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            verify_webhook(self.secret, headers, body, now=self.clock_s())
        except WebhookVerificationError as exc:
            self.received.append(ReceivedWebhook(headers, body, False, str(exc), 400))
            return 400
        status = self.script.pop(0) if self.script else 200
        self.received.append(ReceivedWebhook(headers, body, True, None, status))
        return status


@contextmanager
def run_receiver(
    secret: str, script: list[int] | None = None, clock_s: Callable[[], float] = time.time
) -> Iterator[WebhookReceiver]:
    """Serve a WebhookReceiver on a free loopback port for the duration of the block."""
    state: list[WebhookReceiver] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length)
            status = state[0].handle(dict(self.headers.items()), body)
            self.send_response(status)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(secret, server.server_address[1], list(script or []), clock_s)
    state.append(receiver)
    thread = threading.Thread(target=server.serve_forever, name="webhook-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

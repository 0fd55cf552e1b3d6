"""Tests for client.webhooks, checked against the server's signer in core.webhooks."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from client.webhooks import WebhookVerificationError, verify_webhook
from core import webhooks as server

NOW_S = 1_796_000_000
EVENT = server.build_event(
    "job.succeeded",
    job_id="j-1",
    status="succeeded",
    counters={"pages_total": 2, "pages_done": 2},
    result_url="https://api.test/v1/jobs/j-1/result",
)
BODY = server.encode_event(EVENT)


def make_delivery(secret: str, timestamp_s: int = NOW_S) -> dict[str, str]:
    return server.build_headers(secret, EVENT["id"], timestamp_s, BODY)


def test_verify_webhook_returns_event_signed_by_server() -> None:
    secret = server.generate_secret()

    event = verify_webhook(secret, make_delivery(secret), BODY, now=NOW_S)

    assert event == EVENT


def test_verify_webhook_accepts_text_body() -> None:
    secret = server.generate_secret()

    event = verify_webhook(secret, make_delivery(secret), BODY.decode(), now=NOW_S)

    assert event["id"] == EVENT["id"]


def test_verify_webhook_accepts_secret_without_prefix() -> None:
    secret = server.generate_secret()

    verify_webhook(secret.removeprefix("whsec_"), make_delivery(secret), BODY, now=NOW_S)


def test_verify_webhook_accepts_old_secret_during_rotation() -> None:
    old, new = server.generate_secret(), server.generate_secret()
    headers = server.build_headers([new, old], EVENT["id"], NOW_S, BODY)

    assert verify_webhook(old, headers, BODY, now=NOW_S) == EVENT


def test_verify_webhook_uses_clock_by_default() -> None:
    secret = server.generate_secret()
    headers = make_delivery(secret, timestamp_s=int(time.time()))

    assert verify_webhook(secret, headers, BODY) == EVENT


def test_verify_webhook_rejects_malformed_secret() -> None:
    secret = server.generate_secret()

    with pytest.raises(WebhookVerificationError, match="base64"):
        verify_webhook("whsec_not base64!", make_delivery(secret), BODY, now=NOW_S)


def test_verify_webhook_rejects_non_json_body() -> None:
    secret = server.generate_secret()
    body = b"not json"
    headers = server.build_headers(secret, "msg_1", NOW_S, body)

    with pytest.raises(WebhookVerificationError, match="JSON"):
        verify_webhook(secret, headers, body, now=NOW_S)


def test_verify_webhook_rejects_json_array_body() -> None:
    secret = server.generate_secret()
    body = json.dumps([1, 2]).encode()
    headers = server.build_headers(secret, "msg_1", NOW_S, body)

    with pytest.raises(WebhookVerificationError, match="object"):
        verify_webhook(secret, headers, body, now=NOW_S)


SECRET = server.generate_secret()
Tamper = Callable[[dict[str, str], bytes], tuple[dict[str, str], bytes]]
TAMPERING: dict[str, Tamper] = {
    "untouched": lambda headers, body: (headers, body),
    "body changed": lambda headers, body: (headers, body.replace(b"succeeded", b"failed")),
    "id changed": lambda headers, body: (headers | {"webhook-id": "msg_other"}, body),
    "timestamp shifted": lambda headers, body: (
        headers | {"webhook-timestamp": str(NOW_S + 1)},
        body,
    ),
    "timestamp stale": lambda headers, body: (
        server.build_headers(SECRET, EVENT["id"], NOW_S - 301, body),
        body,
    ),
    "timestamp in future": lambda headers, body: (
        server.build_headers(SECRET, EVENT["id"], NOW_S + 301, body),
        body,
    ),
    "timestamp not integer": lambda headers, body: (
        headers | {"webhook-timestamp": "soon"},
        body,
    ),
    "signature missing": lambda headers, body: (
        {k: v for k, v in headers.items() if k != "webhook-signature"},
        body,
    ),
    "other secret": lambda headers, body: (
        server.build_headers(server.generate_secret(), EVENT["id"], NOW_S, body),
        body,
    ),
    "signature truncated": lambda headers, body: (
        headers | {"webhook-signature": headers["webhook-signature"][:-4]},
        body,
    ),
    "extra unknown signature": lambda headers, body: (
        headers | {"webhook-signature": "v2,abc " + headers["webhook-signature"]},
        body,
    ),
    "header names upper-case": lambda headers, body: (
        {k.upper(): v for k, v in headers.items()},
        body,
    ),
}


@pytest.mark.parametrize("case", sorted(TAMPERING))
def test_client_and_server_verifiers_agree(case: str) -> None:
    """Both verifiers accept and reject exactly the same deliveries."""
    headers, body = TAMPERING[case](make_delivery(SECRET), BODY)

    server_accepts = _accepts(lambda: server.verify(SECRET, headers, body, now=NOW_S))
    client_accepts = _accepts(lambda: verify_webhook(SECRET, headers, body, now=NOW_S))

    assert server_accepts == client_accepts
    expected_accept = case in {"untouched", "extra unknown signature", "header names upper-case"}
    assert client_accepts == expected_accept


def test_client_module_does_not_import_server_packages() -> None:
    """The client package installs without core, so its webhook module must not import it."""
    source = Path(__file__).parents[2] / "client" / "webhooks.py"
    tree = ast.parse(source.read_text())

    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])

    assert imported.isdisjoint({"core", "api", "worker", "models"})


def _accepts(check: Callable[[], object]) -> bool:
    try:
        check()
    except (WebhookVerificationError, server.WebhookVerificationError):
        return False
    return True

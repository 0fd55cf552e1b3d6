"""Verify the webhooks ocrq sends, on the receiving side.

ocrq signs deliveries with Standard Webhooks 1.0 (https://www.standardwebhooks.com/): the
`webhook-signature` header contains space-separated `v1,<base64 HMAC-SHA256>` values over
`f"{webhook-id}.{webhook-timestamp}."` followed by the raw body, keyed with the base64 bytes
after the `whsec_` prefix of the endpoint secret. Any Standard Webhooks library verifies them too.

This module uses only the standard library and does not import the server package, so the client
package installs on its own.

    from client.webhooks import verify_webhook, WebhookVerificationError

    try:
        event = verify_webhook(secret, request.headers, raw_body)
    except WebhookVerificationError:
        return 400
    if already_seen(event["id"]):  # deliveries may repeat; deduplicate on the event id
        return 200
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_S = 300


class WebhookVerificationError(Exception):
    """The webhook is not authentic or is too old or too new to accept."""


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Verify a delivery and return its decoded JSON event.

    Pass the raw request body exactly as received, because re-serialised JSON will not match.
    Raises WebhookVerificationError when a header is missing, the timestamp is more than
    tolerance_s from now (Unix seconds, defaulting to the clock) or no signature matches.
    """
    raw_body = body.encode() if isinstance(body, str) else body
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signature_header = lowered.get("webhook-signature")
    if not msg_id or not timestamp_text or not signature_header:
        message = "missing webhook-id, webhook-timestamp or webhook-signature header"
        raise WebhookVerificationError(message)

    try:
        timestamp_s = int(timestamp_text)
    except ValueError as exc:
        message = f"webhook-timestamp must be integer Unix seconds, got {timestamp_text!r}"
        raise WebhookVerificationError(message) from exc
    current_s = time.time() if now is None else now
    if abs(current_s - timestamp_s) > tolerance_s:
        message = f"webhook-timestamp is more than {tolerance_s} s from the current time"
        raise WebhookVerificationError(message)

    expected = _expected_signature(secret, msg_id, timestamp_s, raw_body)
    if not _any_signature_matches(signature_header, expected):
        message = "no signature in the webhook-signature header matches the secret"
        raise WebhookVerificationError(message)

    try:
        event = json.loads(raw_body)
    except ValueError as exc:
        message = "the signed webhook body is not valid JSON"
        raise WebhookVerificationError(message) from exc
    if not isinstance(event, dict):
        message = "the signed webhook body is not a JSON object"
        raise WebhookVerificationError(message)
    return event


def _expected_signature(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> bytes:
    encoded_key = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded_key, validate=True)
    except binascii.Error as exc:
        message = "the webhook secret is not `whsec_` followed by base64"
        raise WebhookVerificationError(message) from exc

    signed_content = msg_id.encode() + b"." + str(timestamp_s).encode() + b"." + body
    return hmac.new(key, signed_content, hashlib.sha256).digest()


def _any_signature_matches(signature_header: str, expected: bytes) -> bool:
    # During secret rotation the header carries one signature per active secret.
    for entry in signature_header.split():
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if hmac.compare_digest(candidate, expected):
            return True
    return False

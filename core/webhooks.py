"""Webhook signing, verification, retry schedule and event payloads (Standard Webhooks 1.0).

A delivery carries three headers: `webhook-id` (the event id, the same on every retry),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`, a space-separated list
of `v1,<base64 HMAC-SHA256>` values over `f"{id}.{timestamp}."` followed by the raw body. Several
values appear while an endpoint rotates its secret. Spec: https://www.standardwebhooks.com/

This module is pure: no database, network or clock access except through its arguments, so the
delivery worker and the API (endpoint test, redelivery) can share it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import random
import secrets as secrets_module
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

SECRET_PREFIX = "whsec_"
SECRET_MIN_BYTES = 24
SECRET_MAX_BYTES = 64
SIGNATURE_VERSION = "v1"
DEFAULT_TOLERANCE_S = 300

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_SIGNATURE = "webhook-signature"

# Delay before attempt n+1, indexed by n-1: attempt 1 runs at once, attempt 10 runs about three
# days (272,105 s before jitter) after the event. This is the Standard Webhooks schedule.
RETRY_DELAYS_S: tuple[int, ...] = (
    0,
    5,
    5 * 60,
    30 * 60,
    2 * 3600,
    5 * 3600,
    10 * 3600,
    14 * 3600,
    20 * 3600,
    24 * 3600,
)
MAX_ATTEMPTS = len(RETRY_DELAYS_S)
RETRY_JITTER_FRACTION = 0.1
# A receiver's Retry-After can delay the next attempt, but never beyond this.
MAX_RETRY_AFTER_S = 24 * 3600
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})

EVENT_TYPES = frozenset(
    {"job.succeeded", "job.partial", "job.failed", "job.canceled", "batch.completed"}
)
# Payloads stay thin (ids, status, counters, a link to the result); receivers fetch the data.
MAX_PAYLOAD_BYTES = 20_000


class WebhookVerificationError(Exception):
    """A webhook failed verification: missing header, bad signature or stale timestamp."""


class DeliveryVerdict(enum.StrEnum):
    """The delivery worker's next step after one attempt."""

    SUCCEEDED = "succeeded"
    RETRY = "retry"
    DISABLE_ENDPOINT = "disable_endpoint"


@dataclass(frozen=True)
class DeliveryOutcome:
    """The classified result of one delivery attempt."""

    verdict: DeliveryVerdict
    reason: str
    # Seconds the receiver asked us to wait (Retry-After), already clamped to MAX_RETRY_AFTER_S.
    retry_after_s: float | None = None


# Secrets and signatures.


def generate_secret(num_bytes: int = 32) -> str:
    """Generate an endpoint secret: `whsec_` and the base64 of num_bytes random bytes."""
    if not SECRET_MIN_BYTES <= num_bytes <= SECRET_MAX_BYTES:
        message = (
            f"secret length must be {SECRET_MIN_BYTES}-{SECRET_MAX_BYTES} bytes, got {num_bytes}"
        )
        raise ValueError(message)
    key = secrets_module.token_bytes(num_bytes)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """Return the HMAC key inside a `whsec_` secret; raise ValueError if it is malformed."""
    if not secret.startswith(SECRET_PREFIX):
        message = f"webhook secret must start with {SECRET_PREFIX!r}"
        raise ValueError(message)
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        message = "webhook secret is not valid base64 after its prefix"
        raise ValueError(message) from exc
    if not SECRET_MIN_BYTES <= len(key) <= SECRET_MAX_BYTES:
        message = (
            f"webhook secret must hold {SECRET_MIN_BYTES}-{SECRET_MAX_BYTES} bytes, got {len(key)}"
        )
        raise ValueError(message)
    return key


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """Return the `v1,<base64>` signature of one message under one secret."""
    key = decode_secret(secret)
    signed_content = f"{msg_id}.{timestamp_s}.".encode() + body
    digest = hmac.new(key, signed_content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def build_headers(
    secrets: str | Sequence[str], msg_id: str, timestamp_s: int, body: bytes
) -> dict[str, str]:
    """Build the headers of one delivery attempt, signed with every given secret.

    Pass the new and the old secret while an endpoint rotates, so receivers holding either verify.
    """
    secret_list = [secrets] if isinstance(secrets, str) else list(secrets)
    if not secret_list:
        message = "at least one webhook secret is required to sign a delivery"
        raise ValueError(message)

    signatures = " ".join(sign(secret, msg_id, timestamp_s, body) for secret in secret_list)
    return {
        HEADER_ID: msg_id,
        HEADER_TIMESTAMP: str(timestamp_s),
        HEADER_SIGNATURE: signatures,
        "content-type": "application/json",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> None:
    """Check a delivery's signature and timestamp; raise WebhookVerificationError if either fails.

    Header names are matched case-insensitively. The delivery passes when any `v1` signature in the
    header matches, compared in constant time. `now` (Unix seconds) defaults to the clock.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get(HEADER_ID)
    timestamp_text = lowered.get(HEADER_TIMESTAMP)
    signature_header = lowered.get(HEADER_SIGNATURE)
    if not msg_id or not timestamp_text or not signature_header:
        message = f"missing {HEADER_ID}, {HEADER_TIMESTAMP} or {HEADER_SIGNATURE} header"
        raise WebhookVerificationError(message)

    # Replay protection: the timestamp must be an integer within tolerance of now, either side.
    try:
        timestamp_s = int(timestamp_text)
    except ValueError as exc:
        message = f"{HEADER_TIMESTAMP} must be integer Unix seconds, got {timestamp_text!r}"
        raise WebhookVerificationError(message) from exc
    current_s = time.time() if now is None else now
    if abs(current_s - timestamp_s) > tolerance_s:
        message = f"{HEADER_TIMESTAMP} is more than {tolerance_s} s from the current time"
        raise WebhookVerificationError(message)

    try:
        expected = sign(secret, msg_id, timestamp_s, body)
    except ValueError as exc:
        message = "the receiver's webhook secret is malformed"
        raise WebhookVerificationError(message) from exc
    for candidate in signature_header.split(" "):
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    message = "no signature in the webhook-signature header matches the secret"
    raise WebhookVerificationError(message)


# Retry schedule and response classification.


def next_attempt_at(
    attempt: int,
    now: datetime,
    rng: random.Random | None = None,
    retry_after_s: float | None = None,
) -> datetime | None:
    """Return when to run the attempt after `attempt` (1-based) failed, or None when none is left.

    The scheduled delay gets +-10 % jitter so endpoints that fail together are not retried in
    lockstep. A receiver's Retry-After lengthens the delay, never shortens it.
    """
    if attempt < 1:
        message = f"attempt numbers start at 1, got {attempt}"
        raise ValueError(message)
    if attempt >= MAX_ATTEMPTS:
        return None

    delay_s = float(RETRY_DELAYS_S[attempt])
    generator = rng if rng is not None else random.Random()
    delay_s *= 1 + generator.uniform(-RETRY_JITTER_FRACTION, RETRY_JITTER_FRACTION)
    if retry_after_s is not None:
        delay_s = max(delay_s, min(retry_after_s, MAX_RETRY_AFTER_S))
    return now + timedelta(seconds=delay_s)


def classify_response(
    status: int, headers: Mapping[str, str], now: datetime | None = None
) -> DeliveryOutcome:
    """Classify a receiver's HTTP response: 2xx succeeded, 410 disables the endpoint, else retry.

    Redirects count as failures because deliveries never follow them. For 429, 502, 503 and 504
    the Retry-After header (seconds or an HTTP date, relative to `now`) is returned.
    """
    if 200 <= status < 300:
        return DeliveryOutcome(DeliveryVerdict.SUCCEEDED, f"HTTP {status}")
    if status == 410:
        return DeliveryOutcome(DeliveryVerdict.DISABLE_ENDPOINT, "HTTP 410: endpoint is gone")
    if 300 <= status < 400:
        return DeliveryOutcome(DeliveryVerdict.RETRY, f"HTTP {status}: redirects are not followed")
    if status not in RETRY_AFTER_STATUSES:
        return DeliveryOutcome(DeliveryVerdict.RETRY, f"HTTP {status}")

    lowered = {name.lower(): value for name, value in headers.items()}
    retry_after_s = parse_retry_after(lowered.get("retry-after"), now)
    return DeliveryOutcome(DeliveryVerdict.RETRY, f"HTTP {status}", retry_after_s)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the seconds a Retry-After value requests, clamped to [0, MAX_RETRY_AFTER_S].

    Returns None when the value is missing or is neither whole seconds nor an HTTP date.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()

    if text.isascii() and text.isdigit():
        return float(min(int(text), MAX_RETRY_AFTER_S))

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    seconds = (when - current).total_seconds()
    return min(max(seconds, 0.0), float(MAX_RETRY_AFTER_S))


# Event payloads.


def new_event_id() -> str:
    """Return a new event id, sent as the `webhook-id` header and kept across retries."""
    return "msg_" + secrets_module.token_hex(16)


def build_event(
    event_type: str,
    *,
    status: str,
    counters: Mapping[str, int],
    result_url: str | None,
    job_id: str | None = None,
    batch_id: str | None = None,
    event_id: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """Build a thin event payload: `{id, type, timestamp, data}`.

    `data` contains the job or batch id, its status, its counters (for example pages_total and
    pages_done) and the result URL. job.* events need job_id and batch.completed needs batch_id.
    A naive timestamp is taken as UTC.
    """
    if event_type not in EVENT_TYPES:
        message = f"event type must be one of {sorted(EVENT_TYPES)}, got {event_type!r}"
        raise ValueError(message)
    if event_type.startswith("job.") and not job_id:
        message = f"{event_type} events need a job_id"
        raise ValueError(message)
    if event_type.startswith("batch.") and not batch_id:
        message = f"{event_type} events need a batch_id"
        raise ValueError(message)

    data: dict[str, Any] = {"status": status, "counters": dict(counters), "result_url": result_url}
    if job_id is not None:
        data["job_id"] = job_id
    if batch_id is not None:
        data["batch_id"] = batch_id
    moment = timestamp if timestamp is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return {
        "id": event_id if event_id is not None else new_event_id(),
        "type": event_type,
        "timestamp": moment.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def encode_event(event: Mapping[str, Any]) -> bytes:
    """Serialise an event to the compact JSON body that is signed and sent.

    Store these bytes in the outbox and resend them unchanged, so every retry signs the same body.
    """
    body = json.dumps(event, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
    if len(body) > MAX_PAYLOAD_BYTES:
        message = f"event body is {len(body)} bytes; payloads must stay under {MAX_PAYLOAD_BYTES}"
        raise ValueError(message)
    return body

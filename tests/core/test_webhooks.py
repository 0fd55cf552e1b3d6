"""Tests for core.webhooks: Standard Webhooks signing, verification, retries and payloads."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from core import webhooks
from core.webhooks import DeliveryVerdict, WebhookVerificationError

NOW_S = 1_796_000_000
NOW = datetime.fromtimestamp(NOW_S, UTC)
BODY = b'{"type":"job.succeeded"}'


def make_signed(secret: str, timestamp_s: int = NOW_S, msg_id: str = "msg_1") -> dict[str, str]:
    return webhooks.build_headers(secret, msg_id, timestamp_s, BODY)


def test_generate_secret_has_prefix_and_requested_length() -> None:
    secret = webhooks.generate_secret(40)

    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) == 40


def test_generate_secret_is_random() -> None:
    assert webhooks.generate_secret() != webhooks.generate_secret()


@pytest.mark.parametrize("num_bytes", [23, 65])
def test_generate_secret_rejects_length_outside_24_to_64(num_bytes: int) -> None:
    with pytest.raises(ValueError, match="24-64"):
        webhooks.generate_secret(num_bytes)


@pytest.mark.parametrize(
    "secret", ["abc", "whsec_!!!", "whsec_" + base64.b64encode(b"x" * 8).decode()]
)
def test_decode_secret_rejects_malformed(secret: str) -> None:
    with pytest.raises(ValueError):
        webhooks.decode_secret(secret)


def test_sign_matches_independent_hmac() -> None:
    key = bytes(range(32))
    secret = "whsec_" + base64.b64encode(key).decode()
    expected_digest = hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()

    signature = webhooks.sign(secret, "msg_1", 1_700_000_000, BODY)

    assert signature == "v1," + base64.b64encode(expected_digest).decode()


def test_sign_matches_standard_webhooks_reference_vector() -> None:
    """The published test vector of the Standard Webhooks specification."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'

    signature = webhooks.sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_build_headers_carries_id_timestamp_signature() -> None:
    secret = webhooks.generate_secret()

    headers = make_signed(secret)

    assert headers["webhook-id"] == "msg_1"
    assert headers["webhook-timestamp"] == str(NOW_S)
    assert headers["webhook-signature"] == webhooks.sign(secret, "msg_1", NOW_S, BODY)
    assert headers["content-type"] == "application/json"


def test_build_headers_signs_with_every_secret() -> None:
    old, new = webhooks.generate_secret(), webhooks.generate_secret()

    headers = webhooks.build_headers([new, old], "msg_1", NOW_S, BODY)

    assert headers["webhook-signature"].split(" ") == [
        webhooks.sign(new, "msg_1", NOW_S, BODY),
        webhooks.sign(old, "msg_1", NOW_S, BODY),
    ]


def test_build_headers_rejects_empty_secret_list() -> None:
    with pytest.raises(ValueError, match="at least one"):
        webhooks.build_headers([], "msg_1", NOW_S, BODY)


def test_verify_accepts_valid_delivery() -> None:
    secret = webhooks.generate_secret()

    webhooks.verify(secret, make_signed(secret), BODY, now=NOW_S)


def test_verify_matches_header_names_case_insensitively() -> None:
    secret = webhooks.generate_secret()
    headers = {name.title(): value for name, value in make_signed(secret).items()}

    webhooks.verify(secret, headers, BODY, now=NOW_S)


def test_verify_accepts_any_of_several_signatures() -> None:
    """A receiver holding only the old secret verifies during rotation."""
    old, new = webhooks.generate_secret(), webhooks.generate_secret()
    headers = webhooks.build_headers([new, old], "msg_1", NOW_S, BODY)

    webhooks.verify(old, headers, BODY, now=NOW_S)
    webhooks.verify(new, headers, BODY, now=NOW_S)


def test_verify_rejects_other_secret() -> None:
    headers = make_signed(webhooks.generate_secret())

    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(webhooks.generate_secret(), headers, BODY, now=NOW_S)


def test_verify_rejects_changed_body() -> None:
    secret = webhooks.generate_secret()

    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(secret, make_signed(secret), BODY + b" ", now=NOW_S)


def test_verify_rejects_changed_id() -> None:
    secret = webhooks.generate_secret()
    headers = make_signed(secret) | {"webhook-id": "msg_2"}

    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(secret, headers, BODY, now=NOW_S)


def test_verify_rejects_signature_of_other_version() -> None:
    secret = webhooks.generate_secret()
    headers = make_signed(secret)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,")

    with pytest.raises(WebhookVerificationError, match="no signature"):
        webhooks.verify(secret, headers, BODY, now=NOW_S)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_missing_header(missing: str) -> None:
    secret = webhooks.generate_secret()
    headers = make_signed(secret)
    del headers[missing]

    with pytest.raises(WebhookVerificationError, match="missing"):
        webhooks.verify(secret, headers, BODY, now=NOW_S)


@pytest.mark.parametrize("offset_s", [-301, 301])
def test_verify_rejects_timestamp_outside_tolerance(offset_s: int) -> None:
    secret = webhooks.generate_secret()
    headers = make_signed(secret, timestamp_s=NOW_S + offset_s)

    with pytest.raises(WebhookVerificationError, match="300 s"):
        webhooks.verify(secret, headers, BODY, now=NOW_S)


@pytest.mark.parametrize("offset_s", [-300, 300])
def test_verify_accepts_timestamp_at_tolerance_edge(offset_s: int) -> None:
    secret = webhooks.generate_secret()

    webhooks.verify(secret, make_signed(secret, timestamp_s=NOW_S + offset_s), BODY, now=NOW_S)


def test_verify_rejects_non_integer_timestamp() -> None:
    secret = webhooks.generate_secret()
    headers = make_signed(secret) | {"webhook-timestamp": "2026-12-04T00:00:00Z"}

    with pytest.raises(WebhookVerificationError, match="integer"):
        webhooks.verify(secret, headers, BODY, now=NOW_S)


def test_retry_schedule_spans_about_three_days() -> None:
    total_s = sum(webhooks.RETRY_DELAYS_S)

    assert webhooks.MAX_ATTEMPTS == 10
    assert webhooks.RETRY_DELAYS_S[:3] == (0, 5, 300)
    assert 3 * 86400 <= total_s <= 3.5 * 86400


@pytest.mark.parametrize("attempt", range(1, 10))
def test_next_attempt_at_stays_within_jitter(attempt: int) -> None:
    scheduled_s = webhooks.RETRY_DELAYS_S[attempt]

    when = webhooks.next_attempt_at(attempt, NOW, random.Random(attempt))

    assert when is not None
    delay_s = (when - NOW).total_seconds()
    assert scheduled_s * 0.9 <= delay_s <= scheduled_s * 1.1


def test_next_attempt_at_jitters_between_calls() -> None:
    rng = random.Random(7)

    delays = {webhooks.next_attempt_at(5, NOW, rng) for _ in range(5)}

    assert len(delays) == 5


def test_next_attempt_at_returns_none_after_last_attempt() -> None:
    assert webhooks.next_attempt_at(webhooks.MAX_ATTEMPTS, NOW, random.Random(0)) is None


def test_next_attempt_at_rejects_attempt_zero() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        webhooks.next_attempt_at(0, NOW)


def test_next_attempt_at_waits_for_longer_retry_after() -> None:
    when = webhooks.next_attempt_at(1, NOW, random.Random(0), retry_after_s=120)

    assert when == NOW + timedelta(seconds=120)


def test_next_attempt_at_ignores_shorter_retry_after() -> None:
    when = webhooks.next_attempt_at(3, NOW, random.Random(0), retry_after_s=1)

    assert when is not None
    assert (when - NOW).total_seconds() >= 1800 * 0.9


def test_next_attempt_at_caps_retry_after() -> None:
    when = webhooks.next_attempt_at(1, NOW, random.Random(0), retry_after_s=10 * 86400)

    assert when == NOW + timedelta(seconds=webhooks.MAX_RETRY_AFTER_S)


@pytest.mark.parametrize("status", [200, 202, 204, 299])
def test_classify_response_treats_2xx_as_success(status: int) -> None:
    assert webhooks.classify_response(status, {}).verdict is DeliveryVerdict.SUCCEEDED


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_classify_response_treats_redirect_as_failure(status: int) -> None:
    outcome = webhooks.classify_response(status, {"Location": "http://example.test/"})

    assert outcome.verdict is DeliveryVerdict.RETRY
    assert "redirect" in outcome.reason


def test_classify_response_disables_endpoint_on_410() -> None:
    assert webhooks.classify_response(410, {}).verdict is DeliveryVerdict.DISABLE_ENDPOINT


@pytest.mark.parametrize("status", [400, 401, 404, 500])
def test_classify_response_retries_other_failures_without_retry_after(status: int) -> None:
    outcome = webhooks.classify_response(status, {"Retry-After": "60"})

    assert outcome.verdict is DeliveryVerdict.RETRY
    assert outcome.retry_after_s is None


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_classify_response_honours_retry_after_seconds(status: int) -> None:
    outcome = webhooks.classify_response(status, {"Retry-After": "120"})

    assert outcome.verdict is DeliveryVerdict.RETRY
    assert outcome.retry_after_s == 120


def test_classify_response_honours_retry_after_http_date() -> None:
    headers = {"retry-after": format_datetime(NOW + timedelta(seconds=90), usegmt=True)}

    outcome = webhooks.classify_response(503, headers, now=NOW)

    assert outcome.retry_after_s == 90


def test_parse_retry_after_clamps_past_date_to_zero() -> None:
    past = format_datetime(NOW - timedelta(hours=1), usegmt=True)

    assert webhooks.parse_retry_after(past, now=NOW) == 0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1.5", "\u00b2"])
def test_parse_retry_after_ignores_invalid_values(value: str | None) -> None:
    assert webhooks.parse_retry_after(value, now=NOW) is None


def test_parse_retry_after_caps_seconds() -> None:
    assert webhooks.parse_retry_after("999999999") == webhooks.MAX_RETRY_AFTER_S


def test_build_event_for_job() -> None:
    event = webhooks.build_event(
        "job.succeeded",
        job_id="j-1",
        status="succeeded",
        counters={"pages_total": 3, "pages_done": 3},
        result_url="https://api.test/v1/jobs/j-1/result",
        event_id="msg_x",
        timestamp=NOW,
    )

    assert event == {
        "id": "msg_x",
        "type": "job.succeeded",
        "timestamp": NOW.isoformat().replace("+00:00", "Z"),
        "data": {
            "job_id": "j-1",
            "status": "succeeded",
            "counters": {"pages_total": 3, "pages_done": 3},
            "result_url": "https://api.test/v1/jobs/j-1/result",
        },
    }


def test_build_event_for_batch() -> None:
    event = webhooks.build_event(
        "batch.completed", batch_id="b-1", status="completed", counters={}, result_url=None
    )

    assert event["data"]["batch_id"] == "b-1"
    assert "job_id" not in event["data"]
    assert event["id"].startswith("msg_")


def test_build_event_reads_naive_timestamp_as_utc() -> None:
    event = webhooks.build_event(
        "job.failed",
        job_id="j",
        status="failed",
        counters={},
        result_url=None,
        timestamp=datetime(2026, 12, 4, 12, 0, 0),
    )

    assert event["timestamp"] == "2026-12-04T12:00:00Z"


def test_build_event_rejects_unknown_type() -> None:
    with pytest.raises(ValueError, match="event type"):
        webhooks.build_event("job.started", job_id="j", status="x", counters={}, result_url=None)


def test_build_event_requires_matching_id() -> None:
    with pytest.raises(ValueError, match="job_id"):
        webhooks.build_event("job.failed", batch_id="b", status="x", counters={}, result_url=None)
    with pytest.raises(ValueError, match="batch_id"):
        webhooks.build_event(
            "batch.completed", job_id="j", status="x", counters={}, result_url=None
        )


def test_encode_event_is_compact_sorted_json() -> None:
    event = webhooks.build_event(
        "job.failed", job_id="j", status="failed", counters={"b": 1, "a": 2}, result_url=None
    )

    body = webhooks.encode_event(event)

    assert json.loads(body) == event
    assert b" " not in body
    assert body.index(b'"a"') < body.index(b'"b"')


def test_encode_event_rejects_oversized_payload() -> None:
    event = webhooks.build_event(
        "job.failed", job_id="j" * 30_000, status="failed", counters={}, result_url=None
    )

    with pytest.raises(ValueError, match="under"):
        webhooks.encode_event(event)

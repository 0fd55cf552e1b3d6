"""Webhook delivery: send the outbox rows (core/outbox.py) that are due, and schedule retries.

Task ocrq.deliver_webhooks runs on queue ocrq.webhooks, apart from the OCR page loop. One run
claims due rows (pending, next_attempt_at <= now), sends each with one POST, logs a
webhook_attempts row per attempt and schedules the next attempt in the database with
core.webhooks.next_attempt_at. Retries are never long Celery ETAs: a retry due within
FOLLOW_UP_WINDOW_S gets a short follow-up task, and later ones are found by the sweeper.

Claiming moves next_attempt_at CLAIM_TTL_S ahead, so a worker that dies mid-send leaves a row
that becomes due again after the claim expires. The outcome is written only while that claim
still holds, so two workers never both record an attempt for one claim.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from celery import Celery, Task
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core import webhooks
from core.db import Database
from core.errors import OcrError
from core.logging import get_logger
from core.outbox import (
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    DELIVERY_SUCCEEDED,
    QUEUE_WEBHOOKS,
    TASK_DELIVER_WEBHOOKS,
)
from core.settings import Settings
from core.ssrf import Resolver, check_url, parse_allowlist
from core.tables import (
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    as_utc,
    utcnow,
)
from worker import runner

REQUEST_TIMEOUT_S = 15.0
# A claimed row is due again after this, in case its worker died mid-send; longer than one POST.
CLAIM_TTL_S = 60
CLAIM_BATCH_SIZE = 20
# One task run stops claiming after this, so a backlog is shared among tasks and workers.
MAX_RUN_S = 120.0
FOLLOW_UP_WINDOW_S = 120.0
USER_AGENT = "ocrq-webhooks/0.1"
# SSRF refusals never pass on a retry, so they fail the delivery at once.
PERMANENT_ERROR_CODES = frozenset({"url_not_allowed", "invalid_url"})
MAX_ERROR_CHARS = 500

Clock = Callable[[], datetime]

log = get_logger(__name__)


@dataclass(frozen=True)
class DeliveryContext:
    """The settings, database and clock of a delivery run; tests replace the clock and resolver."""

    settings: Settings
    database: Database
    clock: Clock = utcnow
    resolve: Resolver | None = None
    rng: random.Random | None = None


@dataclass(frozen=True)
class Claim:
    """A delivery claimed by this run until `claimed_until`, with the secret that signs it."""

    delivery_id: str
    url: str
    body: bytes
    secret: str
    endpoint_id: str | None
    claimed_until: datetime


@dataclass(frozen=True)
class AttemptResult:
    """The outcome of one POST: an HTTP status, or the error raised before any status arrived."""

    status_code: int | None
    headers: dict[str, str]
    error: str | None
    error_code: str | None
    duration_ms: int


@dataclass(frozen=True)
class DeliveryRun:
    """The totals of one deliver_due() call; follow_up_in_s is set when a retry is due soon."""

    attempted: int
    succeeded: int
    follow_up_in_s: float | None


def deliver_due(context: DeliveryContext, max_run_s: float = MAX_RUN_S) -> DeliveryRun:
    """Claim and send due deliveries until none is left or max_run_s has passed."""
    started = time.monotonic()
    attempted = succeeded = 0
    soonest: datetime | None = None
    while time.monotonic() - started < max_run_s:
        claims = claim_due(context)
        if not claims:
            break
        for claim in claims:
            status, next_at = attempt_delivery(context, claim)
            attempted += 1
            succeeded += status == DELIVERY_SUCCEEDED
            if next_at is not None and (soonest is None or next_at < soonest):
                soonest = next_at

    follow_up_in_s = None
    if soonest is not None:
        wait_s = max(0.0, (soonest - context.clock()).total_seconds())
        follow_up_in_s = wait_s if wait_s <= FOLLOW_UP_WINDOW_S else None
    return DeliveryRun(attempted, succeeded, follow_up_in_s)


def claim_due(context: DeliveryContext, limit: int = CLAIM_BATCH_SIZE) -> list[Claim]:
    """Claim up to `limit` due deliveries by moving their next_attempt_at CLAIM_TTL_S ahead.

    PostgreSQL skips rows another worker has locked (FOR UPDATE SKIP LOCKED). SQLite ignores
    FOR UPDATE, so each row is also claimed with a compare-and-set on next_attempt_at.
    """
    now = context.clock()
    claimed_until = now + timedelta(seconds=CLAIM_TTL_S)
    claims = []
    with context.database.session() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.status == DELIVERY_PENDING)
            .where(WebhookDelivery.next_attempt_at <= now)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        for delivery in rows:
            seen = delivery.next_attempt_at
            claimed_row = session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery.id)
                .where(WebhookDelivery.status == DELIVERY_PENDING)
                .where(WebhookDelivery.next_attempt_at == seen)
                .values(next_attempt_at=claimed_until)
            )
            if int(claimed_row.rowcount) != 1:  # type: ignore[attr-defined]
                continue
            claim = _claim(session, context.settings, delivery, claimed_until)
            if claim is not None:
                claims.append(claim)
    return claims


def attempt_delivery(context: DeliveryContext, claim: Claim) -> tuple[str, datetime | None]:
    """Send one claimed delivery and record the attempt; return its status and next attempt."""
    started_at = context.clock()
    result = post_delivery(context, claim, int(started_at.timestamp()))
    now = context.clock()

    with context.database.session() as session:
        delivery = session.get(WebhookDelivery, claim.delivery_id, with_for_update=True)
        if (
            delivery is None
            or delivery.status != DELIVERY_PENDING
            or as_utc(delivery.next_attempt_at) != claim.claimed_until
        ):
            # Redelivered, deleted or claimed again by another worker after our claim expired.
            log.warning("webhook.claim_lost", delivery_id=claim.delivery_id)
            return DELIVERY_PENDING, None

        number = delivery.attempts + 1
        session.add(
            WebhookAttempt(
                delivery_id=delivery.id,
                number=number,
                started_at=started_at,
                duration_ms=result.duration_ms,
                status_code=result.status_code,
                error=result.error,
            )
        )
        delivery.attempts = number
        delivery.last_status_code = result.status_code
        delivery.last_error = result.error
        _apply_outcome(session, context, delivery, result, number, now)
        status, next_at = delivery.status, as_utc(delivery.next_attempt_at)

    log.info(
        "webhook.attempted",
        delivery_id=claim.delivery_id,
        attempt=number,
        status=status,
        status_code=result.status_code,
        error_code=result.error_code,
        duration_ms=result.duration_ms,
    )
    return status, next_at


def post_delivery(context: DeliveryContext, claim: Claim, timestamp_s: int) -> AttemptResult:
    """POST the signed body to the checked addresses of the target; never follows redirects."""
    started = time.perf_counter()

    def failed(message: str, code: str) -> AttemptResult:
        duration_ms = int((time.perf_counter() - started) * 1000)
        return AttemptResult(None, {}, message[:MAX_ERROR_CHARS], code, duration_ms)

    try:
        allow = parse_allowlist(context.settings.url_allowlist)
        target = check_url(claim.url, allow, resolve=context.resolve)
        original = httpx.URL(claim.url)
    except OcrError as exc:
        return failed(exc.message, exc.code)
    except (httpx.InvalidURL, UnicodeError) as exc:
        # getaddrinfo raises UnicodeError for host names that IDNA cannot encode.
        return failed(f"webhook URL is not valid: {exc}", "invalid_url")

    headers = webhooks.build_headers(claim.secret, claim.delivery_id, timestamp_s, claim.body)
    headers["Host"] = original.netloc.decode("ascii")
    headers["User-Agent"] = USER_AGENT
    extensions = {"sni_hostname": original.raw_host.decode("ascii")}

    # The connection goes to an address check_url resolved, never to a second lookup of the name
    # (DNS rebinding), as in core/fetch.py.
    last_error = "no address to connect to"
    with httpx.Client(trust_env=False, follow_redirects=False, timeout=REQUEST_TIMEOUT_S) as client:
        for address in target.addresses:
            pinned_url = original.copy_with(host=address.split("%", 1)[0])
            request = client.build_request(
                "POST", pinned_url, headers=headers, content=claim.body, extensions=extensions
            )
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as exc:
                last_error = f"could not connect: {exc}"
                continue
            except httpx.TimeoutException:
                return failed(f"no response within {REQUEST_TIMEOUT_S:g} s", "timeout")
            except httpx.TransportError as exc:
                return failed(f"request failed: {type(exc).__name__}: {exc}", "transport_error")
            # The receiver's body is not needed, so it is never read.
            response.close()
            duration_ms = int((time.perf_counter() - started) * 1000)
            return AttemptResult(
                response.status_code, dict(response.headers), None, None, duration_ms
            )
    return failed(last_error, "connect_error")


def register_webhook_tasks(app: Celery, context_factory: Callable[[], DeliveryContext]) -> None:
    """Register task ocrq.deliver_webhooks on `app`; context_factory builds its context once."""
    contexts: list[DeliveryContext] = []

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_DELIVER_WEBHOOKS,
        bind=True,
        acks_late=True,
        ignore_result=True,
        shared=False,
    )
    def deliver_webhooks_task(self: Task[Any, Any]) -> int:
        if not contexts:
            contexts.append(context_factory())
        run = deliver_due(contexts[0])
        if run.follow_up_in_s is not None:
            self.apply_async(countdown=run.follow_up_in_s, queue=QUEUE_WEBHOOKS)
        return run.attempted


def worker_delivery_context() -> DeliveryContext:
    """Return a delivery context on this worker process's settings and database."""
    context = runner.worker_context()
    return DeliveryContext(context.settings, context.database)


def _claim(
    session: Session, settings: Settings, delivery: WebhookDelivery, claimed_until: datetime
) -> Claim | None:
    """Return the claim with its signing secret, or fail the row when it cannot be sent."""
    secret: str | None = None
    if delivery.endpoint_id is not None:
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
        if endpoint is not None and endpoint.disabled_at is None:
            secret = endpoint.secret
        reason = "the webhook endpoint is disabled"
    elif delivery.tenant_id is not None:
        tenant = session.get(Tenant, delivery.tenant_id)
        secret = tenant.webhook_secret if tenant is not None else None
        reason = "the tenant no longer exists"
    else:
        value = settings.webhook_secret
        secret = value.get_secret_value() if value is not None else None
        reason = "OCRQ_WEBHOOK_SECRET is not set"

    if secret is None:
        delivery.status = DELIVERY_FAILED
        delivery.next_attempt_at = None
        delivery.last_error = reason
        log.warning("webhook.abandoned", delivery_id=delivery.id, reason=reason)
        return None
    return Claim(
        delivery_id=delivery.id,
        url=delivery.url,
        body=delivery.payload.encode(),
        secret=secret,
        endpoint_id=delivery.endpoint_id,
        claimed_until=claimed_until,
    )


def _apply_outcome(
    session: Session,
    context: DeliveryContext,
    delivery: WebhookDelivery,
    result: AttemptResult,
    number: int,
    now: datetime,
) -> None:
    """Set the delivery's status and next attempt from one attempt's result."""
    if result.status_code is None:
        if result.error_code in PERMANENT_ERROR_CODES:
            delivery.status = DELIVERY_FAILED
            delivery.next_attempt_at = None
            return
        _schedule_retry(context, delivery, number, now, None)
        return

    outcome = webhooks.classify_response(result.status_code, result.headers, now)
    delivery.last_error = None if outcome.verdict == "succeeded" else outcome.reason
    if outcome.verdict == webhooks.DeliveryVerdict.SUCCEEDED:
        delivery.status = DELIVERY_SUCCEEDED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
    elif outcome.verdict == webhooks.DeliveryVerdict.DISABLE_ENDPOINT:
        delivery.status = DELIVERY_FAILED
        delivery.next_attempt_at = None
        if delivery.endpoint_id is not None:
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            if endpoint is not None and endpoint.disabled_at is None:
                endpoint.disabled_at = now
                endpoint.disabled_reason = outcome.reason
                log.warning("webhook_endpoint.disabled", endpoint_id=endpoint.id)
    else:
        _schedule_retry(context, delivery, number, now, outcome.retry_after_s)


def _schedule_retry(
    context: DeliveryContext,
    delivery: WebhookDelivery,
    number: int,
    now: datetime,
    retry_after_s: float | None,
) -> None:
    next_at = webhooks.next_attempt_at(number, now, context.rng, retry_after_s)
    if next_at is None:
        delivery.status = DELIVERY_FAILED
        delivery.next_attempt_at = None
        log.warning("webhook.failed", delivery_id=delivery.id, attempts=number)
        return
    delivery.next_attempt_at = next_at

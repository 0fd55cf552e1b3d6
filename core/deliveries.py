"""Webhook deliveries and endpoints as the API shows them: list, redeliver, create, delete.

Every function takes `tenant_id`. A string limits it to that tenant's rows, and another
tenant's job, batch, delivery or endpoint raises the same NotFoundError as an unknown id. None
(no-auth and embedded mode) reads every row, as the job service does.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core import webhooks
from core.db import Database
from core.errors import ConflictError, InputError, NotFoundError
from core.idempotency_store import IdempotentRequest, record_key
from core.outbox import DELIVERY_PENDING, request_delivery
from core.settings import Settings
from core.ssrf import check_url, parse_allowlist
from core.tables import (
    Batch,
    Job,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    isoformat,
    utcnow,
)

MAX_ENDPOINTS_PER_TENANT = 20
MAX_ENDPOINT_URL_CHARS = 2000


def delivery_to_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    """Return the public form of a delivery with its attempts, oldest first."""
    return {
        "id": delivery.id,
        "event_type": delivery.event_type,
        "url": delivery.url,
        "endpoint_id": delivery.endpoint_id,
        "job_id": delivery.job_id,
        "batch_id": delivery.batch_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": isoformat(delivery.next_attempt_at),
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "created_at": isoformat(delivery.created_at),
        "delivered_at": isoformat(delivery.delivered_at),
        "attempt_log": [attempt_to_dict(attempt) for attempt in delivery.attempt_log],
    }


def attempt_to_dict(attempt: WebhookAttempt) -> dict[str, Any]:
    return {
        "number": attempt.number,
        "started_at": isoformat(attempt.started_at),
        "duration_ms": attempt.duration_ms,
        "status_code": attempt.status_code,
        "error": attempt.error,
    }


def endpoint_to_dict(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """Return the public form of an endpoint; its secret is shown only when it is created."""
    return {
        "id": endpoint.id,
        "url": endpoint.url,
        "created_at": isoformat(endpoint.created_at),
        "disabled_at": isoformat(endpoint.disabled_at),
        "disabled_reason": endpoint.disabled_reason,
    }


def list_job_deliveries(
    database: Database, job_id: str, *, tenant_id: str | None
) -> list[dict[str, Any]]:
    """Return the job's deliveries, oldest first; raise NotFoundError for an unknown job."""
    with database.session() as session:
        job = session.get(Job, job_id)
        if job is None or not _visible(job.tenant_id, tenant_id):
            raise NotFoundError(f"Job {job_id[:64]!r} was not found.", code="job_not_found")
        return _deliveries(session, WebhookDelivery.job_id == job_id)


def list_batch_deliveries(
    database: Database, batch_id: str, *, tenant_id: str | None
) -> list[dict[str, Any]]:
    """Return the batch.completed deliveries of a batch; raise NotFoundError for an unknown one."""
    with database.session() as session:
        batch = session.get(Batch, batch_id)
        if batch is None or not _visible(batch.tenant_id, tenant_id):
            raise NotFoundError(f"Batch {batch_id[:64]!r} was not found.", code="batch_not_found")
        is_batch_event = WebhookDelivery.event_type == "batch.completed"
        return _deliveries(session, (WebhookDelivery.batch_id == batch_id) & is_batch_event)


def redeliver(
    database: Database,
    settings: Settings,
    job_id: str,
    delivery_id: str,
    *,
    tenant_id: str | None,
    idempotency: IdempotentRequest | None = None,
) -> dict[str, Any]:
    """Make a delivery of the job due now, under its own event id and body; return it.

    With `idempotency`, the key is recorded in the same transaction (core.idempotency_store).

    A delivered or failed delivery becomes pending again and keeps its attempt log. Raises
    NotFoundError for an unknown job or delivery, ConflictError when its endpoint is disabled.
    """
    with database.session() as session:
        job = session.get(Job, job_id)
        delivery = session.get(WebhookDelivery, delivery_id, with_for_update=True)
        if job is None or not _visible(job.tenant_id, tenant_id):
            raise NotFoundError(f"Job {job_id[:64]!r} was not found.", code="job_not_found")
        if delivery is None or delivery.job_id != job_id:
            message = f"Delivery {delivery_id[:64]!r} of job {job_id!r} was not found."
            raise NotFoundError(message, code="delivery_not_found")
        if delivery.endpoint_id is not None:
            endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
            if endpoint is None or endpoint.disabled_at is not None:
                message = (
                    f"Delivery {delivery_id} goes to a disabled webhook endpoint; create a new "
                    "endpoint to receive later events."
                )
                raise ConflictError(message, code="endpoint_disabled")

        delivery.status = DELIVERY_PENDING
        delivery.next_attempt_at = utcnow()
        delivery.delivered_at = None
        delivery.last_error = None
        session.flush()
        if idempotency is not None:
            record_key(session, idempotency, delivery.id)
        public = delivery_to_dict(delivery)
    request_delivery(settings)
    return public


def read_delivery(
    database: Database, job_id: str, delivery_id: str, *, tenant_id: str | None
) -> dict[str, Any]:
    """Return the current state of one delivery; raise NotFoundError when either id is unknown."""
    with database.session() as session:
        job = session.get(Job, job_id)
        delivery = session.get(WebhookDelivery, delivery_id)
        if job is None or not _visible(job.tenant_id, tenant_id):
            raise NotFoundError(f"Job {job_id[:64]!r} was not found.", code="job_not_found")
        if delivery is None or delivery.job_id != job_id:
            message = f"Delivery {delivery_id[:64]!r} of job {job_id!r} was not found."
            raise NotFoundError(message, code="delivery_not_found")
        return delivery_to_dict(delivery)


def create_endpoint(
    database: Database,
    settings: Settings,
    url: str,
    *,
    tenant_id: str | None,
    idempotency: IdempotentRequest | None = None,
) -> dict[str, Any]:
    """Create a tenant's endpoint with a new secret; return it with the secret.

    The secret is returned here and, for a replay of the same Idempotency-Key, by
    read_endpoint_with_secret; never by a listing.

    The URL must pass the SSRF guard as deliveries do. Raises InputError when it does not, when
    there is no tenant (OCRQ_AUTH_REQUIRED=false) or when the tenant has too many endpoints.
    """
    if tenant_id is None:
        message = (
            "Webhook endpoints belong to a tenant; send an API key (OCRQ_AUTH_REQUIRED is off, "
            "so this request has none)."
        )
        raise InputError(message, code="tenant_required", http_status=403)
    has_space = any(char.isspace() or not char.isprintable() for char in url)
    if len(url) > MAX_ENDPOINT_URL_CHARS or has_space:
        message = (
            f"Expected a webhook URL of at most {MAX_ENDPOINT_URL_CHARS} characters without "
            "spaces or control characters."
        )
        raise InputError(message, code="invalid_webhook_url")
    try:
        check_url(url, parse_allowlist(settings.url_allowlist))
    except UnicodeError as exc:
        # getaddrinfo raises this for host names that IDNA cannot encode (empty labels, ...).
        message = f"Expected a webhook URL with a valid host name, got {url[:200]!r}."
        raise InputError(message, code="invalid_webhook_url") from exc

    with database.session() as session:
        existing = session.scalars(
            select(WebhookEndpoint.id)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .where(WebhookEndpoint.disabled_at.is_(None))
        ).all()
        if len(existing) >= MAX_ENDPOINTS_PER_TENANT:
            message = (
                f"Expected at most {MAX_ENDPOINTS_PER_TENANT} enabled webhook endpoints per "
                "tenant; delete one first."
            )
            raise InputError(message, code="too_many_endpoints", http_status=409)
        endpoint = WebhookEndpoint(tenant_id=tenant_id, url=url, secret=webhooks.generate_secret())
        session.add(endpoint)
        session.flush()
        if idempotency is not None:
            record_key(session, idempotency, endpoint.id)
        created = endpoint_to_dict(endpoint)
        created["secret"] = endpoint.secret
    return created


def read_endpoint_with_secret(
    database: Database, endpoint_id: str, *, tenant_id: str | None
) -> dict[str, Any]:
    """Return an endpoint with its secret, for the replay of the request that created it."""
    with database.session() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or not _visible(endpoint.tenant_id, tenant_id):
            message = f"Webhook endpoint {endpoint_id[:64]!r} was not found."
            raise NotFoundError(message, code="endpoint_not_found")
        found = endpoint_to_dict(endpoint)
        found["secret"] = endpoint.secret
    return found


def list_endpoints(database: Database, *, tenant_id: str | None) -> list[dict[str, Any]]:
    """Return the tenant's endpoints, oldest first, without their secrets."""
    statement = select(WebhookEndpoint).order_by(WebhookEndpoint.created_at)
    if tenant_id is not None:
        statement = statement.where(WebhookEndpoint.tenant_id == tenant_id)
    with database.session() as session:
        return [endpoint_to_dict(endpoint) for endpoint in session.scalars(statement)]


def delete_endpoint(database: Database, endpoint_id: str, *, tenant_id: str | None) -> None:
    """Delete an endpoint and its deliveries; raise NotFoundError for an unknown one."""
    with database.session() as session:
        endpoint = session.get(WebhookEndpoint, endpoint_id)
        if endpoint is None or not _visible(endpoint.tenant_id, tenant_id):
            message = f"Webhook endpoint {endpoint_id[:64]!r} was not found."
            raise NotFoundError(message, code="endpoint_not_found")
        session.delete(endpoint)


def _visible(owner: str | None, tenant_id: str | None) -> bool:
    return tenant_id is None or owner == tenant_id


def _deliveries(session: Session, condition: Any) -> list[dict[str, Any]]:
    statement = (
        select(WebhookDelivery)
        .where(condition)
        .options(selectinload(WebhookDelivery.attempt_log))
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
    )
    return [delivery_to_dict(delivery) for delivery in session.scalars(statement)]

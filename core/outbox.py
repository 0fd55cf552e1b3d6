"""The webhook outbox: event rows written in the transaction that changes a job's or batch's state.

A job that reaches a final state (succeeded, partial, failed, canceled) and a batch whose last
job ended each get one webhook_deliveries row per target: the job's or batch's webhook_url, and
every enabled endpoint of its tenant. Because the rows commit or roll back with the state change,
no event is lost and none is sent for a change that did not happen. worker/webhooks.py sends the
rows later; request_delivery() wakes it after the commit, and the sweeper finds any row that the
wake-up missed.

Each row stores the exact body it will send, and its id is the event id (webhook-id header), so
every retry of a delivery signs and sends the same bytes under the same id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, event, func, or_, select
from sqlalchemy.orm import Session

from core import webhooks
from core.celery_app import get_celery_app
from core.db import Database
from core.logging import get_logger
from core.settings import Settings, get_settings
from core.states import JobStatus
from core.tables import Batch, Job, Tenant, WebhookDelivery, WebhookEndpoint, utcnow

TASK_DELIVER_WEBHOOKS = "ocrq.deliver_webhooks"
QUEUE_WEBHOOKS = "ocrq.webhooks"

DELIVERY_PENDING = "pending"
DELIVERY_SUCCEEDED = "succeeded"
DELIVERY_FAILED = "failed"

BATCH_RUNNING = "running"
BATCH_COMPLETED = "completed"

JOB_EVENT_TYPES = {
    JobStatus.SUCCEEDED: "job.succeeded",
    JobStatus.PARTIAL: "job.partial",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELED: "job.canceled",
}

# Sends the due deliveries in this process; registered by embedded mode, which has no broker.
EmbeddedDeliverer = Callable[[], object]

# Process-wide state, kept to this one place: the embedded deliverer.
_embedded_deliverer: EmbeddedDeliverer | None = None

log = get_logger(__name__)


def record_job_event(
    session: Session, job: Job, settings: Settings | None = None
) -> list[WebhookDelivery]:
    """Add the outbox rows of the job's final state to `session`; return them.

    Call it in the transaction that sets the final status. A job whose status is not final
    gets no rows.
    """
    event_type = JOB_EVENT_TYPES.get(JobStatus(job.status))
    if event_type is None:
        return []
    settings = settings or get_settings()
    counters = {"pages_total": job.pages_total or 0, "pages_done": job.pages_done or 0}
    result_url = f"{settings.api_url.rstrip('/')}/v1/jobs/{job.id}/result"

    def event(event_id: str) -> dict[str, Any]:
        return webhooks.build_event(
            event_type,
            status=job.status,
            counters=counters,
            result_url=result_url,
            job_id=job.id,
            batch_id=job.batch_id,
            event_id=event_id,
            timestamp=job.finished_at or utcnow(),
        )

    return _add_deliveries(
        session,
        settings,
        event_type=event_type,
        build=event,
        tenant_id=job.tenant_id,
        webhook_url=job.webhook_url,
        job_id=job.id,
        batch_id=job.batch_id,
    )


def record_batch_event(
    session: Session, batch: Batch, settings: Settings | None = None
) -> list[WebhookDelivery]:
    """Add the batch.completed outbox rows, with the batch's job counts per state; return them."""
    settings = settings or get_settings()
    rows = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch.id).group_by(Job.status)
    )
    counters = {"jobs_total": batch.jobs_total}
    counters.update({str(status): int(count) for status, count in rows})
    result_url = f"{settings.api_url.rstrip('/')}/v1/batches/{batch.id}"

    def event(event_id: str) -> dict[str, Any]:
        return webhooks.build_event(
            "batch.completed",
            status=batch.status,
            counters=counters,
            result_url=result_url,
            batch_id=batch.id,
            event_id=event_id,
            timestamp=batch.finished_at or utcnow(),
        )

    return _add_deliveries(
        session,
        settings,
        event_type="batch.completed",
        build=event,
        tenant_id=batch.tenant_id,
        webhook_url=batch.webhook_url,
        batch_id=batch.id,
    )


def record_job_finished(session: Session, job_id: str, settings: Settings | None = None) -> None:
    """Record the events of a job that just reached its final state.

    Call it in the transaction of the status change, after that update: it writes the job's
    event rows and, when this was the last job of a batch, completes the batch with its event.
    The delivery worker is woken after the transaction commits.
    """
    session.flush()
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return
    record_job_event(session, job, settings)
    maybe_complete_batch(session, job.batch_id, settings)


def maybe_complete_batch(
    session: Session, batch_id: str | None, settings: Settings | None = None
) -> bool:
    """Mark the batch completed and record batch.completed when every one of its jobs has ended.

    Call it in the transaction that gave one of the batch's jobs its final status, after that
    update. The batch row is locked (FOR UPDATE on PostgreSQL), so of two jobs ending at once
    the second to take the lock counts both as ended. Returns True when this call completed
    the batch.
    """
    if batch_id is None:
        return False
    batch = session.get(Batch, batch_id, with_for_update=True, populate_existing=True)
    if batch is None or batch.status != BATCH_RUNNING:
        return False

    counts = session.execute(
        select(Job.status, func.count()).where(Job.batch_id == batch_id).group_by(Job.status)
    )
    ended = unfinished = 0
    for status, count in counts:
        if JobStatus(status).is_final:
            ended += int(count)
        else:
            unfinished += int(count)
    # A batch whose jobs are still being created counts fewer rows than jobs_total.
    if unfinished or ended < batch.jobs_total:
        return False

    batch.status = BATCH_COMPLETED
    batch.finished_at = utcnow()
    session.flush()
    record_batch_event(session, batch, settings)
    log.info("batch.completed", batch_id=batch_id, jobs=ended)
    return True


def delete_deliveries(
    session: Session, *, job_ids: Sequence[str] = (), batch_ids: Sequence[str] = ()
) -> int:
    """Delete the deliveries (their attempts cascade) of deleted jobs and batches; return how many.

    Called in the transaction that deletes the job or batch rows, so no signed payload of a
    deleted resource stays behind.
    """
    conditions = []
    if job_ids:
        conditions.append(WebhookDelivery.job_id.in_(list(job_ids)))
    if batch_ids:
        conditions.append(WebhookDelivery.batch_id.in_(list(batch_ids)))
    if not conditions:
        return 0
    result = session.execute(delete(WebhookDelivery).where(or_(*conditions)))
    return int(getattr(result, "rowcount", 0) or 0)


def set_embedded_deliverer(deliverer: EmbeddedDeliverer | None) -> None:
    """Register the function that sends due deliveries in this process when no broker is set."""
    global _embedded_deliverer
    _embedded_deliverer = deliverer


def request_delivery(settings: Settings) -> None:
    """Wake the delivery worker after a commit that wrote outbox rows; never raises.

    With a broker this sends task ocrq.deliver_webhooks to queue ocrq.webhooks. In embedded
    mode the registered deliverer runs now, in the caller's thread. A lost wake-up delays the
    delivery until the next sweep, which sends every due row.
    """
    try:
        if settings.embedded:
            if _embedded_deliverer is not None:
                _embedded_deliverer()
            return
        get_celery_app(settings).send_task(
            TASK_DELIVER_WEBHOOKS, queue=QUEUE_WEBHOOKS, retry=True, retry_policy=_SEND_RETRY
        )
    except Exception:
        # The rows are committed; the sweeper sends them later.
        log.warning("webhook.wake_failed", exc_info=True)


def due_deliveries_exist(session: Session, now: datetime | None = None) -> bool:
    """Return True when some pending delivery is due at `now` (default: the clock)."""
    moment = now or utcnow()
    statement = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status == DELIVERY_PENDING)
        .where(WebhookDelivery.next_attempt_at <= moment)
        .limit(1)
    )
    return session.scalar(statement) is not None


def wake_if_due(settings: Settings, database: Database) -> bool:
    """Wake the delivery worker when some delivery is due; return whether one is.

    The sweeper calls this every round. It finds retries that came due, rows whose wake-up was
    lost (the process died between the commit and request_delivery) and claims that expired
    because their worker died mid-send.
    """
    with database.session() as session:
        due = due_deliveries_exist(session)
    if due:
        request_delivery(settings)
    return due


# Marks a session whose commit already wakes the delivery worker.
_WAKE_KEY = "ocrq.outbox.wake"
# Publishing gives up after about 2 s, as job enqueues do (core.celery_app).
_SEND_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def _add_deliveries(
    session: Session,
    settings: Settings,
    *,
    event_type: str,
    build: Callable[[str], dict[str, Any]],
    tenant_id: str | None,
    webhook_url: str | None,
    job_id: str | None = None,
    batch_id: str | None = None,
) -> list[WebhookDelivery]:
    targets: list[tuple[str, str | None]] = []
    if webhook_url:
        if _has_url_secret(session, tenant_id, settings):
            targets.append((webhook_url, None))
        else:
            # Nothing could sign it; a receiver must reject unsigned events anyway.
            log.warning(
                "webhook.dropped",
                event_type=event_type,
                job_id=job_id,
                batch_id=batch_id,
                reason="no tenant and no OCRQ_WEBHOOK_SECRET",
            )
    if tenant_id is not None:
        endpoints = session.scalars(
            select(WebhookEndpoint)
            .where(WebhookEndpoint.tenant_id == tenant_id)
            .where(WebhookEndpoint.disabled_at.is_(None))
            .order_by(WebhookEndpoint.created_at)
        )
        targets.extend((endpoint.url, endpoint.id) for endpoint in endpoints)

    now = utcnow()
    deliveries = []
    for url, endpoint_id in targets:
        event_id = webhooks.new_event_id()
        body = webhooks.encode_event(build(event_id))
        delivery = WebhookDelivery(
            id=event_id,
            tenant_id=tenant_id,
            endpoint_id=endpoint_id,
            job_id=job_id,
            batch_id=batch_id,
            url=url,
            event_type=event_type,
            payload=body.decode(),
            status=DELIVERY_PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        session.add(delivery)
        deliveries.append(delivery)
    if deliveries:
        session.flush()
        _wake_after_commit(session, settings)
        log.info(
            "webhook.recorded",
            event_type=event_type,
            job_id=job_id,
            batch_id=batch_id,
            deliveries=len(deliveries),
        )
    return deliveries


def _wake_after_commit(session: Session, settings: Settings) -> None:
    # Waking the worker before the commit could let it look before the rows are visible.
    if session.info.get(_WAKE_KEY):
        return
    session.info[_WAKE_KEY] = True

    def wake(committed: Session) -> None:
        if committed.info.pop(_WAKE_KEY, None):
            request_delivery(settings)

    def forget(rolled_back: Session, _transaction: object) -> None:
        # The rows are gone with the rollback, so the commit listener must not fire later.
        rolled_back.info.pop(_WAKE_KEY, None)

    event.listen(session, "after_commit", wake, once=True)
    event.listen(session, "after_soft_rollback", forget, once=True)


def _has_url_secret(session: Session, tenant_id: str | None, settings: Settings) -> bool:
    if tenant_id is not None:
        return session.get(Tenant, tenant_id) is not None
    return settings.webhook_secret is not None

"""The job service shared by the API and `ocrq run`: create, read, cancel and delete jobs.

Order of writes when a job is created: the document is inspected (bad input never becomes a
job), the input is stored, the job row is committed, and only then is the task enqueued. If the
enqueue fails the job stays queued with enqueued_at unset, and sweep() sends it again later.
"""

from __future__ import annotations

import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from core.celery_app import (
    MESSAGE_PRIORITIES,
    VISIBILITY_TIMEOUT_FACTOR,
    enqueue_job,
    enqueue_pages,
)
from core.db import Database
from core.documents import Limits
from core.errors import ConflictError, InputError, NotFoundError, OcrError
from core.idempotency_store import (
    IdempotentRequest,
    create_or_replay,
    purge_expired,
    record_key,
)
from core.inputs import prepare_source, prepare_upload
from core.job_options import DEFAULT_MODE, DEFAULT_TASK, check_job_options, check_webhook_url
from core.logging import get_logger
from core.outbox import delete_deliveries, record_job_finished
from core.results import build_result, expire_results
from core.scheduling import claimable, in_flight
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.storage import Storage, input_key, job_prefixes, open_storage
from core.tables import Job, Page, isoformat, new_id, utcnow

# A running attempt refreshes jobs.heartbeat_at this often, from a thread beside the engine.
HEARTBEAT_INTERVAL_S = 20.0
# A running job whose heartbeat is older than this has lost its worker: a new attempt may take
# it over, and sweep() sends it again.
LEASE_TTL_S = 90

# A queued job is re-enqueued by sweep() only after this grace, so a create_job() that is
# still between its commit and its enqueue is not sent twice.
SWEEP_GRACE_S = 30
# Maximum wake messages that one sweep sends; the next sweep sends the rest. Wake messages are
# idempotent (each claims the best page, or finds none and ends), so a surplus costs one query.
PAGE_WAKE_MAX_PER_SWEEP = 200

log = get_logger(__name__)


def job_to_dict(job: Job) -> dict[str, Any]:
    """Return the public form of a job, as GET /v1/jobs/{id} sends it."""
    error = None
    if job.error_code:
        error = {"code": job.error_code, "message": job.error_message or ""}
    return {
        "id": job.id,
        "status": job.status,
        "pages_total": job.pages_total,
        "pages_done": job.pages_done,
        "engine": job.engine,
        "mode": job.mode,
        "task": job.task,
        "error": error,
        "created_at": isoformat(job.created_at),
        "started_at": isoformat(job.started_at),
        "finished_at": isoformat(job.finished_at),
    }


def cancel_pages(session: Session, job_id: str) -> None:
    """Mark the job's pending and running pages canceled, in the caller's cancel transaction.

    No page of the job may start after this, and a running page's writes are fenced off by
    its job's status, so no page row of a canceled job stays pending.
    """
    session.execute(
        update(Page)
        .where(Page.job_id == job_id)
        .where(Page.status.in_([PageStatus.PENDING, PageStatus.RUNNING]))
        .values(status=PageStatus.CANCELED, heartbeat_at=None)
    )


class JobService:
    """Create, read, cancel and delete jobs against one database and one storage."""

    def __init__(self, settings: Settings, database: Database, storage: Storage) -> None:
        self.settings = settings
        self.database = database
        self.storage = storage

    @classmethod
    def open(cls, settings: Settings) -> JobService:
        """Build the service on the database and storage named in `settings`."""
        return cls(settings, Database(settings.resolved_database_url), open_storage(settings))

    def create_job(
        self,
        path: Path | None,
        *,
        filename: str | None = None,
        engine: str | None = None,
        mode: str = DEFAULT_MODE,
        task: str = DEFAULT_TASK,
        target: str | None = None,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        idempotency: IdempotentRequest | None = None,
        password: str | None = None,
        tenant_id: str | None = None,
        batch_id: str | None = None,
        priority: str = "normal",
        source: dict[str, Any] | None = None,
    ) -> Job:
        """Inspect, store, commit and enqueue a job for the document at `path`.

        With `source` ({"type": "url"|"s3", ...}, core.inputs.parse_source) instead of a path,
        the source is checked and the worker fetches the document.

        Raises InputError for a document or option the service cannot accept; nothing is
        stored then. With `idempotency`, the key's record is inserted in the job row's
        transaction. IdempotencyKeyTaken means another request with the key committed first,
        and nothing of this one is kept; create_or_replay_job() handles it. An enqueue failure
        is logged, not raised: the job stays queued for sweep().

        `password` is never stored: a PDF it opens is stored decrypted (core.inputs).
        """
        engine = engine or self.settings.engine
        check_job_options(engine, mode, task, target, model_path=self.settings.model_path)
        check_webhook_url(webhook_url, self.settings)
        if priority not in MESSAGE_PRIORITIES:
            message = f"Expected priority high, normal or low, got {priority!r}."
            raise InputError(message, code="invalid_priority", http_status=422)

        if source is not None:
            prepared = prepare_source(source, self.settings)
        else:
            assert path is not None
            prepared = prepare_upload(path, Limits.from_settings(self.settings), password)

        job_id = new_id()
        key = input_key(job_id)
        prepared.store(self.storage, key)

        job = Job(
            id=job_id,
            status=JobStatus.QUEUED,
            engine=engine,
            mode=mode,
            task=task,
            target=target,
            filename=filename,
            media_type=prepared.media_type,
            input_key=key,
            size_bytes=prepared.size_bytes,
            pages_total=prepared.page_count,
            pages_done=0,
            attempt=0,
            metadata_=metadata,
            webhook_url=webhook_url,
            idempotency_key=idempotency.key if idempotency else None,
            tenant_id=tenant_id,
            batch_id=batch_id,
            priority=priority,
            source=prepared.source,
        )
        try:
            with self.database.session() as session:
                session.add(job)
                if idempotency is not None:
                    record_key(session, idempotency, job_id)
        except Exception:
            # No row will ever point at the stored input, so it goes too.
            self.storage.delete_prefix(job_prefixes(job_id)[0])
            raise
        log.info(
            "job.created",
            job_id=job_id,
            pages=prepared.page_count,
            bytes=job.size_bytes,
            media_type=prepared.media_type,
            source=prepared.source["type"],
            engine=engine,
            mode=mode,
            task=task,
        )

        self.enqueue(job_id)
        return self.get_job(job_id)

    def create_or_replay_job(
        self,
        path: Path | None,
        *,
        idempotency: IdempotentRequest,
        tenant_id: str | None,
        **options: Any,
    ) -> tuple[Job, bool]:
        """Create a job once per Idempotency-Key; return (job, True), or (original, False).

        A replay with a different request raises ConflictError (409 idempotency_key_reused).
        The original job is read within the tenant, so a replay of a deleted job is a 404.
        """
        return create_or_replay(
            self.database,
            idempotency,
            create=lambda: self.create_job(
                path, idempotency=idempotency, tenant_id=tenant_id, **options
            ),
            load=lambda job_id: self.get_job(job_id, tenant_id=tenant_id),
        )

    def create_job_from_bytes(self, data: bytes, **options: Any) -> Job:
        """Create a job from an in-memory document (see create_job for the options)."""
        with tempfile.TemporaryDirectory(prefix="ocrq-upload-") as folder:
            path = Path(folder) / "document"
            path.write_bytes(data)
            return self.create_job(path, **options)

    def enqueue(self, job_id: str) -> bool:
        """Enqueue the job and record enqueued_at; return False (and log) when it failed."""
        with self.database.session() as session:
            priority = session.scalar(select(Job.priority).where(Job.id == job_id)) or "normal"
        try:
            enqueue_job(job_id, self.settings, priority)
        except OcrError as exc:
            log.warning("job.enqueue_failed", job_id=job_id, error_code=exc.code, error=exc.message)
            return False

        # The latest send time: sweep() compares it with the window, so a queued job is re-sent at
        # most once per window.
        with self.database.session() as session:
            job = session.get(Job, job_id)
            if job is not None and (job.enqueued_at is None or job.status == JobStatus.QUEUED):
                job.enqueued_at = utcnow()
        log.info("job.enqueued", job_id=job_id)
        return True

    # Every read, cancel and delete below takes `tenant_id`. A string restricts it to that
    # tenant's jobs, and another tenant's job is reported exactly like an unknown id. None means
    # no restriction: the worker, `ocrq run` and the API with OCRQ_AUTH_REQUIRED=false.

    def get_job(self, job_id: str, *, tenant_id: str | None = None) -> Job:
        """Return the job row; raise NotFoundError for an unknown id or another tenant's job."""
        with self.database.session() as session:
            return _load_job(session, job_id, tenant_id=tenant_id)

    def get_job_dict(self, job_id: str, *, tenant_id: str | None = None) -> dict[str, Any]:
        return job_to_dict(self.get_job(job_id, tenant_id=tenant_id))

    def get_result(self, job_id: str, *, tenant_id: str | None = None) -> dict[str, Any]:
        """Return the result document built from the page rows written so far."""
        with self.database.session() as session:
            job = _load_job(session, job_id, tenant_id=tenant_id)
            return build_result(job.id, list(job.pages))

    def get_result_markdown(self, job_id: str, *, tenant_id: str | None = None) -> str:
        return str(self.get_result(job_id, tenant_id=tenant_id)["markdown"])

    def list_figures(self, job_id: str, *, tenant_id: str | None = None) -> list[str]:
        """Return the figure names (`{page}_{k}.jpg`) stored for the job, in page order."""
        with self.database.session() as session:
            job = _load_job(session, job_id, tenant_id=tenant_id)
            return [name for page in job.pages for name in (page.result or {}).get("figures", [])]

    def cancel_job(self, job_id: str, *, tenant_id: str | None = None) -> Job:
        """Cancel a queued or running job; a running attempt stops before its next page.

        Raises ConflictError when the job has already finished.
        """
        with self.database.session() as session:
            job = _load_job(session, job_id, for_update=True, tenant_id=tenant_id)
            if JobStatus(job.status).is_final:
                message = (
                    f"Job {job_id} is already {job.status}; only queued or running jobs cancel."
                )
                raise ConflictError(message, code="job_finished")
            previous = job.status
            job.status = JobStatus.CANCELED
            job.finished_at = utcnow()
            cancel_pages(session, job.id)
            # The job.canceled webhook commits with the status change.
            record_job_finished(session, job.id, self.settings)
        log.info("job.canceled", job_id=job_id, previous_status=previous)
        return self.get_job(job_id)

    def delete_job(self, job_id: str, *, tenant_id: str | None = None) -> None:
        """Delete a finished job's stored objects, then its rows.

        Raises ConflictError while the job is queued or running (cancel it first).
        """
        job = self.get_job(job_id, tenant_id=tenant_id)
        if not JobStatus(job.status).is_final:
            message = f"Job {job_id} is still {job.status}; cancel it before deleting its data."
            raise ConflictError(message, code="job_not_finished")

        deleted = sum(self.storage.delete_prefix(prefix) for prefix in job_prefixes(job_id))
        with self.database.session() as session:
            row = session.get(Job, job_id)
            if row is not None:
                session.delete(row)
            delete_deliveries(session, job_ids=[job_id])
        log.info("job.deleted", job_id=job_id, objects=deleted)

    def cancel_or_delete(self, job_id: str, *, tenant_id: str | None = None) -> Job | None:
        """Cancel a queued or running job and return it; delete a finished one and return None."""
        job = self.get_job(job_id, tenant_id=tenant_id)
        if JobStatus(job.status).is_final:
            self.delete_job(job_id, tenant_id=tenant_id)
            return None
        try:
            return self.cancel_job(job_id, tenant_id=tenant_id)
        except ConflictError:
            # It finished between the two reads; its data goes as for any finished job.
            self.delete_job(job_id, tenant_id=tenant_id)
            return None

    def sweep(self, grace_s: int = SWEEP_GRACE_S, now: datetime | None = None) -> list[str]:
        """Re-enqueue jobs whose enqueue never happened or whose message was lost, and running
        jobs whose worker is gone.

        A queued job still unclaimed one visibility timeout (3 x OCRQ_TASK_TIME_LIMIT_S) after
        its last send is sent again: a flushed or lost broker message would otherwise leave it
        queued forever, and a duplicate message is dropped by the job lease.

        A running job is sent again when its heartbeat is older than LEASE_TTL_S and none of its
        pages runs or waits, so the new attempt plans the pages anew or finishes the job. A page
        whose heartbeat is older than PAGE_LEASE_TTL_S gets a new ocrq.process_page message.
        Expired idempotency records are purged, and finished jobs past OCRQ_RESULT_RETENTION_S
        deleted. Returns the job ids sent. `now` is for tests; it defaults to the clock.
        """
        now = now or utcnow()
        never_enqueued = (
            (Job.status == JobStatus.QUEUED)
            & Job.enqueued_at.is_(None)
            & (Job.created_at < now - timedelta(seconds=grace_s))
        )
        abandoned = (Job.status == JobStatus.RUNNING) & (
            Job.heartbeat_at < now - timedelta(seconds=LEASE_TTL_S)
        )
        page_live = select(Page.id).where(Page.job_id == Job.id, in_flight(now)).exists()
        page_pending = (
            select(Page.id).where(Page.job_id == Job.id, Page.status == PageStatus.PENDING).exists()
        )
        # Pending pages of a quiet job get wake messages below (OCRQ_PAGE_WAKE_AFTER_S). The
        # job itself is planned again only after it stayed quiet past the visibility timeout.
        quiet_s = VISIBILITY_TIMEOUT_FACTOR * self.settings.task_time_limit_s
        message_lost = (
            (Job.status == JobStatus.QUEUED)
            & Job.enqueued_at.is_not(None)
            & (Job.enqueued_at < now - timedelta(seconds=quiet_s))
        )
        replan = (
            abandoned
            & ~page_live
            & (~page_pending | (Job.heartbeat_at < now - timedelta(seconds=quiet_s)))
        )
        with self.database.session() as session:
            statement = (
                select(Job.id)
                .where(or_(never_enqueued, message_lost, replan))
                .order_by(Job.created_at)
            )
            job_ids = list(session.scalars(statement))
            # Pages whose worker died mid-page: one new page message each.
            stale_pages: list[Any] = session.execute(
                select(Page.job_id, func.count())
                .join(Job, Job.id == Page.job_id)
                .where(Job.status == JobStatus.RUNNING, Page.status == PageStatus.RUNNING)
                .where(claimable(now))
                .group_by(Page.job_id)
            ).all()  # type: ignore[assignment]
            # Pending pages whose wake message may be lost: one more message each.
            stale_pages += self._unwoken_pages(session, now)

        sent = [job_id for job_id in job_ids if self.enqueue(job_id)]
        for job_id, count in stale_pages:
            try:
                enqueue_pages(job_id, int(count), self.settings)
            except OcrError as exc:
                log.warning("pages.enqueue_failed", job_id=job_id, error=exc.message)
        if job_ids or stale_pages:
            log.info(
                "sweep.finished",
                found=len(job_ids),
                enqueued=len(sent),
                stale_pages=sum(int(count) for _, count in stale_pages),
            )
        purge_expired(self.database)
        # Imported here: core.results builds on this module's page documents.
        expire_results(self.database, self.storage, self.settings.result_retention_s, now)
        return sent

    def _unwoken_pages(self, session: Session, now: datetime) -> list[tuple[str, int]]:
        """Return (job_id, count) of pending pages whose job was quiet for OCRQ_PAGE_WAKE_AFTER_S.

        A page's wake message can be lost: a worker killed with messages prefetched (Redis
        restores them only after its visibility timeout), a job task that died between planning
        its pages and sending them, a re-send the broker refused. A job shows activity through
        jobs.heartbeat_at, which its attempt and each of its pages refresh.
        """
        wake_after_s = self.settings.page_wake_after_s
        if wake_after_s <= 0:
            return []
        quiet = now - timedelta(seconds=wake_after_s)
        rows = session.execute(
            select(Page.job_id, func.count())
            .join(Job, Job.id == Page.job_id)
            .where(Job.status == JobStatus.RUNNING, Page.status == PageStatus.PENDING)
            .where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < quiet))
            .group_by(Page.job_id, Job.created_at)
            .order_by(Job.created_at)
        ).all()
        woken: list[tuple[str, int]] = []
        budget = PAGE_WAKE_MAX_PER_SWEEP
        for job_id, count in rows:
            if budget <= 0:
                break
            woken.append((job_id, min(int(count), budget)))
            budget -= int(count)
        return woken


def _load_job(
    session: Session, job_id: str, *, for_update: bool = False, tenant_id: str | None = None
) -> Job:
    job = session.get(Job, job_id, with_for_update=for_update)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        # Another tenant's job gets the same error as an unknown id, so ids leak nothing.
        raise NotFoundError(f"Job {job_id[:64]!r} was not found.", code="job_not_found")
    # Page rows are needed after the session closes (expire_on_commit is off).
    _ = list(job.pages)
    return job

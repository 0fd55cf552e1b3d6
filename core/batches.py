"""Batches: many documents submitted together with shared options, one job each.

A batch is all or nothing at intake. Every document is checked first: an upload is inspected,
a URL or S3 source is checked. If any one fails, the whole batch is rejected with 422 naming
the document's index and its error code, and nothing is stored. So a client fixes or drops
that document and sends the batch again, instead of tracking which half was accepted. Then the
uploads are stored, the batch row and every job row commit in one transaction, and the jobs are
enqueued. When the last job ends, core.outbox.maybe_complete_batch completes the batch and
records batch.completed.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from core.celery_app import MESSAGE_PRIORITIES
from core.documents import Limits
from core.errors import InputError, NotFoundError
from core.idempotency_store import IdempotentRequest, create_or_replay, record_key
from core.inputs import PreparedInput, prepare_source, prepare_upload
from core.job_options import DEFAULT_MODE, DEFAULT_TASK, check_job_options, check_webhook_url
from core.jobs import JobService, cancel_pages, job_to_dict
from core.logging import get_logger
from core.outbox import BATCH_RUNNING, record_batch_event, record_job_event
from core.states import JobStatus
from core.storage import input_key, job_prefixes
from core.tables import Batch, Job, isoformat, new_id, utcnow

BATCH_CANCELED = "canceled"
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# Job states counted in GET /v1/batches/{id}, every one present even when zero.
COUNTED_STATES = ("queued", "running", "succeeded", "partial", "failed", "canceled")

log = get_logger(__name__)


@dataclass(frozen=True)
class BatchDocument:
    """One document of a batch: an uploaded file, or a URL or S3 source (core.inputs)."""

    path: Path | None = None
    filename: str | None = None
    source: dict[str, Any] | None = None


@dataclass(frozen=True)
class BatchOptions:
    """The options every job of a batch shares."""

    mode: str = DEFAULT_MODE
    task: str = DEFAULT_TASK
    target: str | None = None
    priority: str = "normal"
    webhook_url: str | None = None
    metadata: dict[str, Any] | None = None


class BatchService:
    """Create, read and cancel batches; jobs go through the JobService's database and storage."""

    def __init__(self, jobs: JobService) -> None:
        self.jobs = jobs
        self.settings = jobs.settings
        self.database = jobs.database

    def create_batch(
        self,
        documents: Sequence[BatchDocument],
        options: BatchOptions,
        *,
        tenant_id: str | None = None,
        idempotency: IdempotentRequest | None = None,
    ) -> dict[str, Any]:
        """Check every document, store them, commit the batch with its jobs, enqueue the jobs.

        Raises InputError (422) for a bad option, too many or no documents, or the first
        document rejected (its index and code in the message). Nothing is stored then.
        """
        self._check_request(documents, options)
        prepared = [self._prepare(index, document) for index, document in enumerate(documents)]

        batch_id = new_id()
        job_ids = [new_id() for _ in prepared]
        stored: list[str] = []
        try:
            for job_id, item in zip(job_ids, prepared, strict=True):
                item.store(self.jobs.storage, input_key(job_id))
                stored.append(job_id)
            with self.database.session() as session:
                self._insert(session, batch_id, job_ids, prepared, documents, options, tenant_id)
                if idempotency is not None:
                    record_key(session, idempotency, batch_id)
        except Exception:
            # No row will point at these inputs.
            for job_id in stored:
                self.jobs.storage.delete_prefix(job_prefixes(job_id)[0])
            raise
        log.info("batch.created", batch_id=batch_id, jobs=len(job_ids))

        for job_id in job_ids:
            self.jobs.enqueue(job_id)
        return self.get_batch(batch_id, tenant_id=tenant_id)

    def create_or_replay_batch(
        self,
        documents: Sequence[BatchDocument],
        options: BatchOptions,
        *,
        idempotency: IdempotentRequest,
        tenant_id: str | None,
    ) -> tuple[dict[str, Any], bool]:
        """Create the batch once per Idempotency-Key; a replay returns the original (False)."""
        return create_or_replay(
            self.database,
            idempotency,
            create=lambda: self.create_batch(
                documents, options, tenant_id=tenant_id, idempotency=idempotency
            ),
            load=lambda batch_id: self.get_batch(batch_id, tenant_id=tenant_id),
        )

    def get_batch(
        self,
        batch_id: str,
        *,
        tenant_id: str | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Return the batch with its counts per job state and one page of its jobs.

        Jobs come in submission order; next_cursor (None on the last page) fetches the next.
        """
        after = _decode_cursor(cursor) if cursor else None
        with self.database.session() as session:
            batch = _load_batch(session, batch_id, tenant_id)
            counts = dict.fromkeys(COUNTED_STATES, 0)
            rows = session.execute(
                select(Job.status, func.count())
                .where(Job.batch_id == batch_id)
                .group_by(Job.status)
            )
            counts.update({str(status): int(count) for status, count in rows})

            statement = select(Job).where(Job.batch_id == batch_id)
            if after is not None:
                statement = statement.where(tuple_(Job.created_at, Job.id) > after)
            statement = statement.order_by(Job.created_at, Job.id).limit(limit + 1)
            jobs = list(session.scalars(statement))

        next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
        return {
            "id": batch.id,
            "status": batch.status,
            "jobs_total": batch.jobs_total,
            "counts": counts,
            "priority": batch.priority,
            "created_at": isoformat(batch.created_at),
            "finished_at": isoformat(batch.finished_at),
            "jobs": [job_to_dict(job) for job in jobs[:limit]],
            "next_cursor": next_cursor,
        }

    def cancel_batch(self, batch_id: str, *, tenant_id: str | None = None) -> dict[str, Any]:
        """Cancel every queued or running job of the batch and end the batch as canceled.

        One transaction: each job's job.canceled and the batch's batch.completed (status
        canceled) are recorded with the state changes. A batch that has already ended is
        returned unchanged.
        """
        with self.database.session() as session:
            batch = _load_batch(session, batch_id, tenant_id, for_update=True)
            if batch.status == BATCH_RUNNING:
                unfinished = session.scalars(
                    select(Job)
                    .where(Job.batch_id == batch_id)
                    .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
                    .with_for_update()
                )
                now = utcnow()
                canceled = 0
                for job in unfinished:
                    job.status = JobStatus.CANCELED
                    job.finished_at = now
                    cancel_pages(session, job.id)
                    record_job_event(session, job, self.settings)
                    canceled += 1
                batch.status = BATCH_CANCELED
                batch.finished_at = now
                session.flush()
                record_batch_event(session, batch, self.settings)
                log.info("batch.canceled", batch_id=batch_id, jobs=canceled)
        return self.get_batch(batch_id, tenant_id=tenant_id)

    def _check_request(self, documents: Sequence[BatchDocument], options: BatchOptions) -> None:
        maximum = self.settings.max_batch_jobs
        if not documents or len(documents) > maximum:
            message = (
                f"Expected 1 to {maximum} documents in a batch (OCRQ_MAX_BATCH_JOBS), "
                f"got {len(documents)}."
            )
            raise InputError(message, code="batch_size_invalid")
        check_job_options(
            self.settings.engine,
            options.mode,
            options.task,
            options.target,
            model_path=self.settings.model_path,
        )
        check_webhook_url(options.webhook_url, self.settings)
        if options.priority not in MESSAGE_PRIORITIES:
            message = f"Expected priority high, normal or low, got {options.priority!r}."
            raise InputError(message, code="invalid_priority")

    def _prepare(self, index: int, document: BatchDocument) -> PreparedInput:
        """Check one document; an InputError is raised again naming the document's index."""
        try:
            if document.source is not None:
                return prepare_source(document.source, self.settings)
            assert document.path is not None
            return prepare_upload(document.path, Limits.from_settings(self.settings))
        except InputError as exc:
            message = f"Document {index} of the batch was rejected ({exc.code}): {exc.message}"
            raise InputError(message, code=exc.code, http_status=422) from exc

    def _insert(
        self,
        session: Session,
        batch_id: str,
        job_ids: list[str],
        prepared: list[PreparedInput],
        documents: Sequence[BatchDocument],
        options: BatchOptions,
        tenant_id: str | None,
    ) -> None:
        now = utcnow()
        session.add(
            Batch(
                id=batch_id,
                tenant_id=tenant_id,
                status=BATCH_RUNNING,
                options={"mode": options.mode, "task": options.task, "target": options.target},
                priority=options.priority,
                webhook_url=options.webhook_url,
                metadata_=options.metadata,
                jobs_total=len(job_ids),
                created_at=now,
            )
        )
        session.flush()
        for index, (job_id, item, document) in enumerate(
            zip(job_ids, prepared, documents, strict=True)
        ):
            session.add(
                Job(
                    id=job_id,
                    status=JobStatus.QUEUED,
                    engine=self.settings.engine,
                    mode=options.mode,
                    task=options.task,
                    target=options.target,
                    filename=document.filename,
                    media_type=item.media_type,
                    input_key=input_key(job_id),
                    size_bytes=item.size_bytes,
                    pages_total=item.page_count,
                    pages_done=0,
                    attempt=0,
                    metadata_=options.metadata,
                    tenant_id=tenant_id,
                    batch_id=batch_id,
                    priority=options.priority,
                    source=item.source,
                    # Spaced a microsecond apart, so created_at keeps submission order.
                    created_at=now + timedelta(microseconds=index),
                )
            )


def _load_batch(
    session: Session, batch_id: str, tenant_id: str | None, *, for_update: bool = False
) -> Batch:
    batch = session.get(Batch, batch_id, with_for_update=for_update)
    if batch is None or (tenant_id is not None and batch.tenant_id != tenant_id):
        # Another tenant's batch gets the same error as an unknown id.
        raise NotFoundError(f"Batch {batch_id[:64]!r} was not found.", code="batch_not_found")
    return batch


def _encode_cursor(job: Job) -> str:
    position = json.dumps([isoformat(job.created_at), job.id])
    return base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Return (created_at, job id) after which the next page starts; InputError if malformed."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created_at, job_id = json.loads(base64.urlsafe_b64decode(padded))
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")), str(job_id)
    except (ValueError, TypeError, binascii.Error, AttributeError):
        message = "The cursor is not one this API returned; pass next_cursor unchanged."
        raise InputError(message, code="invalid_cursor") from None

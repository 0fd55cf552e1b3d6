"""Process one job: lease it, read each page through the engine, store the results, finish it.

One call of process_job() is one attempt, fenced by its lease (worker/lease.py). Pages are
planned once per (job_id, page_index), so a redelivered task resumes where the last attempt
stopped and never duplicates a page.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import select

from core.celery_app import enqueue_pages
from core.documents import Limits, inspect_document
from core.errors import InputError, OcrError
from core.logging import elapsed_ms, get_logger
from core.outbox import record_job_finished
from core.states import JobStatus, PageStatus
from core.tables import Job, Page, utcnow
from models.engine import Engine
from worker.context import PipelineContext, ProgressCallback
from worker.inputs import download_input
from worker.job_result import finish_job
from worker.lease import (
    Lease,
    LeaseLost,
    check_lease,
    fenced_update,
    heartbeat,
    lease_job,
    rowcount,
)
from worker.pages import finish_job as finish_planned_job
from worker.pages import plan_pages, process_next

RETRY_BASE_DELAY_S = 10
RETRY_MAX_DELAY_S = 300

log = get_logger(__name__)


@dataclass(frozen=True)
class AttemptOutcome:
    """The end of an attempt: the job's status now, and whether another attempt should follow."""

    status: str
    retry: bool = False
    retry_in_s: int = 0


def process_job(
    job_id: str,
    context: PipelineContext,
    *,
    password: str | None = None,
    on_page: ProgressCallback | None = None,
    fan_out: bool = False,
) -> AttemptOutcome:
    """Run one attempt of the job; a duplicate delivery returns status "dropped" at once.

    With `fan_out`, the attempt counts the pages and sends them to the broker, returning status
    running. Otherwise it runs every page in this process.
    """
    lease = lease_job(context, job_id)
    if lease is None:
        return AttemptOutcome(status="dropped")

    started = time.perf_counter()
    with (
        structlog.contextvars.bound_contextvars(job_id=job_id, attempt=lease.attempt),
        heartbeat(context, lease),
    ):
        try:
            status = run_attempt(context, lease, password, on_page, fan_out)
        except LeaseLost:
            status = current_status(context, job_id)
            log.info("attempt.stopped", status=status, duration_ms=elapsed_ms(started))
            return AttemptOutcome(status=status)
        except InputError as exc:
            # The document itself is unusable: no later attempt could do better.
            try:
                finish_job(context, lease, JobStatus.FAILED, exc.code, exc.message)
            except LeaseLost:
                return AttemptOutcome(status=current_status(context, job_id))
            log.info(
                "job.finished",
                status=JobStatus.FAILED,
                error_code=exc.code,
                duration_ms=elapsed_ms(started),
            )
            return AttemptOutcome(status=JobStatus.FAILED)
        except Exception as exc:
            return handle_attempt_error(context, lease, exc, started)

        event = "job.finished" if JobStatus(status).is_final else "job.planned"
        log.info(event, status=status, duration_ms=elapsed_ms(started))
        return AttemptOutcome(status=status)


def run_attempt(
    context: PipelineContext,
    lease: Lease,
    password: str | None,
    on_page: ProgressCallback | None,
    fan_out: bool = False,
) -> str:
    """Count the pages and plan a page row for each, then run them or send them out.

    Returns the job's status: final once every page has ended, else running (`fan_out`).
    """
    settings = context.settings
    limits = Limits.from_settings(settings)
    with tempfile.TemporaryDirectory(prefix="ocrq-job-") as folder:
        path = Path(folder) / "original"
        # A URL or S3 source is fetched and stored on the first attempt (worker/inputs.py).
        download_input(
            context.settings,
            context.database,
            context.storage,
            lease.job_id,
            lease.input_key,
            path,
        )

        info = inspect_document(path, limits, password)
        engine = context.engines(lease.engine)
        check_engine_task(engine, lease.options.task)
        done = start_attempt(context, lease, info.page_count, engine.name)
        log.info("attempt.started", pages=info.page_count, pages_done=len(done), engine=engine.name)

        # Each page becomes a pending row that any worker may claim (worker/pages.py). Behind a
        # broker the pages go out as ocrq.process_page messages and the last page to finish
        # finishes the job. Without one (`ocrq run`, fan_out False) they run here, in order.
        waiting = plan_pages(context, lease.job_id, info.page_count)
        if fan_out:
            if waiting:
                enqueue_pages(lease.job_id, waiting, settings)
                return JobStatus.RUNNING
            return finish_planned_job(context, lease.job_id) or current_status(
                context, lease.job_id
            )
        while process_next(
            context,
            lambda _job_id, _key: path,
            job_id=lease.job_id,
            password=password,
            on_page=on_page,
            fair_share=False,
        ).ran:
            check_lease(context, lease)
        return finish_planned_job(context, lease.job_id) or current_status(context, lease.job_id)


def check_engine_task(engine: Engine, task: str) -> None:
    """Raise InputError unsupported_task when the engine cannot run `task` on any page.

    An engine lists its tasks in `supported_tasks`; one without the attribute runs them all.
    The job then fails once, with no retry and no page tried.
    """
    supported = getattr(engine, "supported_tasks", None)
    if supported is not None and task not in supported:
        message = f"Expected task {', '.join(supported)} for engine {engine.name}, got {task!r}."
        raise InputError(message, code="unsupported_task")


def start_attempt(
    context: PipelineContext, lease: Lease, page_count: int, engine_name: str
) -> set[int]:
    """Record the page count and engine; return the indexes of pages already succeeded."""
    with context.database.session() as session:
        fenced = session.execute(
            fenced_update(lease).values(pages_total=page_count, engine=engine_name)
        )
        if rowcount(fenced) != 1:
            raise LeaseLost(lease.job_id)
        statement = select(Page.page_index).where(
            Page.job_id == lease.job_id, Page.status == PageStatus.SUCCEEDED
        )
        return set(session.scalars(statement))


def handle_attempt_error(
    context: PipelineContext, lease: Lease, exc: Exception, started: float
) -> AttemptOutcome:
    """Release the job for a later attempt, or fail it once OCRQ_MAX_ATTEMPTS are used."""
    settings = context.settings
    code = exc.code if isinstance(exc, OcrError) else "internal_error"
    if isinstance(exc, OcrError):
        message = exc.message
    elif settings.debug:
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = f"The worker failed with {type(exc).__name__}."

    final = lease.attempt >= settings.max_attempts
    status = JobStatus.FAILED if final else JobStatus.QUEUED
    values: dict[str, Any] = {"status": status, "error_code": code, "error_message": message}
    if final:
        values["finished_at"] = utcnow()
    else:
        values["heartbeat_at"] = None
    with context.database.session() as session:
        released = session.execute(fenced_update(lease).values(**values))
        if final and rowcount(released) == 1:
            record_job_finished(session, lease.job_id, context.settings)
    if rowcount(released) != 1:
        log.warning("attempt.stopped", reason="lease_lost", error_code=code, exc_info=exc)
        return AttemptOutcome(status=current_status(context, lease.job_id))

    duration_ms = elapsed_ms(started)
    if final:
        log.error(
            "job.finished", status=status, error_code=code, duration_ms=duration_ms, exc_info=exc
        )
        return AttemptOutcome(status=status)
    delay_s = min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** (lease.attempt - 1))
    log.warning(
        "attempt.failed",
        status=status,
        error_code=code,
        retry_in_s=delay_s,
        duration_ms=duration_ms,
        exc_info=exc,
    )
    return AttemptOutcome(status=status, retry=True, retry_in_s=delay_s)


def current_status(context: PipelineContext, job_id: str) -> str:
    with context.database.session() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status or "missing"

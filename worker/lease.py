"""Lease a job for one attempt, and fence every later write of that attempt.

The lease is a compare-and-set on jobs.attempt, which then serves as a fencing token. Every
later write of the attempt requires that attempt number and the running status. After a cancel,
or a takeover by a newer attempt, the old attempt stops before its next page and writes nothing
more.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.jobs import HEARTBEAT_INTERVAL_S, LEASE_TTL_S
from core.logging import get_logger
from core.outbox import record_job_finished
from core.settings import Settings
from core.states import JobStatus
from core.tables import Job, as_utc, utcnow
from models.engine import PageOptions
from worker.context import PipelineContext

log = get_logger(__name__)


@dataclass(frozen=True)
class Lease:
    """The job as this attempt leased it; `attempt` is the fencing token of every write."""

    job_id: str
    attempt: int
    engine: str
    options: PageOptions
    input_key: str


class LeaseLost(Exception):
    """The job was canceled or taken over by a newer attempt; this attempt must stop."""


@contextmanager
def heartbeat(context: PipelineContext, lease: Lease) -> Iterator[None]:
    """Refresh the job's heartbeat every HEARTBEAT_INTERVAL_S while the block runs.

    The engine may spend minutes on one page. Without this thread, a live attempt would look
    dead to the sweeper and to a redelivered task after LEASE_TTL_S.
    """

    def beat() -> bool:
        with context.database.session() as session:
            fenced = session.execute(fenced_update(lease).values(heartbeat_at=utcnow()))
        # False once canceled or taken over; the attempt notices before its next page.
        return rowcount(fenced) == 1

    with heartbeat_thread(f"ocrq-heartbeat-{lease.job_id}", HEARTBEAT_INTERVAL_S, beat):
        yield


@contextmanager
def heartbeat_thread(name: str, interval_s: float, beat: Callable[[], bool]) -> Iterator[None]:
    """Call `beat` every `interval_s` in a daemon thread named `name` while the block runs.

    The thread stops when the block ends or `beat` returns False. A beat that raises is logged
    and tried again at the next interval.
    """
    stop = threading.Event()
    bound = structlog.contextvars.get_contextvars()

    def run() -> None:
        structlog.contextvars.bind_contextvars(**bound)
        while not stop.wait(interval_s):
            try:
                if not beat():
                    return
            except Exception:
                log.warning("heartbeat.failed", exc_info=True)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def lease_job(context: PipelineContext, job_id: str) -> Lease | None:
    """Take the job for a new attempt, or return None when this delivery must be dropped.

    A job is leased when it is queued, or running under an attempt whose heartbeat is older
    than LEASE_TTL_S (its worker died). The attempt counter moves in one conditional
    UPDATE, so of two deliveries racing for the same job only one wins.
    """
    settings = context.settings
    now = utcnow()
    with context.database.session() as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("attempt.dropped", job_id=job_id, reason="job_not_found")
            return None
        reason = _drop_reason(job, now, LEASE_TTL_S)
        if reason is not None:
            log.info("attempt.dropped", job_id=job_id, reason=reason, status=job.status)
            return None
        if job.attempt >= settings.max_attempts:
            # Earlier attempts died without recording an outcome (killed worker, lost node).
            message = f"Job {job_id} used all {job.attempt} attempts (OCRQ_MAX_ATTEMPTS)."
            _fail_exhausted(session, job, message, now, settings)
            log.error("job.finished", job_id=job_id, status=JobStatus.FAILED, reason=message)
            return None

        seen_attempt = job.attempt
        leased = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.attempt == seen_attempt)
            .where(Job.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
            .values(
                attempt=seen_attempt + 1,
                status=JobStatus.RUNNING,
                heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now),
                error_code=None,
                error_message=None,
            )
        )
        if rowcount(leased) != 1:
            log.info("attempt.dropped", job_id=job_id, reason="lease_taken")
            return None

    options = PageOptions(mode=job.mode, task=job.task, target=job.target)  # type: ignore[arg-type]
    return Lease(job_id, seen_attempt + 1, job.engine, options, job.input_key)


def _drop_reason(job: Job, now: datetime, stale_after_s: int) -> str | None:
    if JobStatus(job.status).is_final:
        return "job_finished"
    heartbeat = as_utc(job.heartbeat_at)
    if (
        job.status == JobStatus.RUNNING
        and heartbeat
        and heartbeat > now - timedelta(seconds=stale_after_s)
    ):
        return "job_running"
    return None


def _fail_exhausted(
    session: Session, job: Job, message: str, now: datetime, settings: Settings
) -> None:
    exhausted = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt)
        .values(
            status=JobStatus.FAILED,
            error_code="attempts_exhausted",
            error_message=message,
            finished_at=now,
        )
    )
    if rowcount(exhausted) == 1:
        record_job_finished(session, job.id, settings)


def check_lease(context: PipelineContext, lease: Lease) -> None:
    """Raise LeaseLost when the job was canceled or taken over since the last page."""
    with context.database.session() as session:
        row = session.execute(select(Job.status, Job.attempt).where(Job.id == lease.job_id)).first()
    if row is None or row.status != JobStatus.RUNNING or row.attempt != lease.attempt:
        raise LeaseLost(lease.job_id)


def fenced_update(lease: Lease) -> Any:
    """Return an UPDATE of the job that matches only while this attempt still runs it."""
    return update(Job).where(
        Job.id == lease.job_id, Job.attempt == lease.attempt, Job.status == JobStatus.RUNNING
    )


def rowcount(result: Any) -> int:
    """Return how many rows an UPDATE matched, as an int for mypy."""
    return int(result.rowcount)

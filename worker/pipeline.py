"""Process one job: lease it, read each page through the engine, store the results, finish it.

One call of process_job() is one attempt. The lease is a compare-and-set on jobs.attempt, which
then serves as a fencing token. Every later write of the attempt requires that attempt number
and the running status. After a cancel, or a takeover by a newer attempt, the old attempt
stops before its next page and writes nothing more. Pages are upserted on (job_id, page_index), so a
redelivered task resumes where the last attempt stopped and never duplicates a page.
"""

from __future__ import annotations

import io
import json
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from core.celery_app import enqueue_pages
from core.db import Database
from core.documents import Limits, inspect_document
from core.errors import InputError, OcrError, TransientError
from core.jobs import HEARTBEAT_INTERVAL_S, LEASE_TTL_S, as_utc, build_result
from core.logging import get_logger
from core.outbox import record_job_finished
from core.settings import Settings
from core.states import JobStatus, PageStatus, final_job_status
from core.storage import Storage, figure_key, result_json_key, result_markdown_key
from core.tables import Job, Page, utcnow
from models.engine import Engine, PageInput, PageOptions, PageResult
from worker.inputs import download_input

FIGURE_JPEG_QUALITY = 90
RETRY_BASE_DELAY_S = 10
RETRY_MAX_DELAY_S = 300

EngineProvider = Callable[[str], Engine]
# Called after each page with (pages_done, pages_total), e.g. to move a progress bar.
ProgressCallback = Callable[[int, int], None]

log = get_logger(__name__)


@dataclass(frozen=True)
class PipelineContext:
    """The settings, database, storage and engine source that an attempt runs with."""

    settings: Settings
    database: Database
    storage: Storage
    engines: EngineProvider


@dataclass(frozen=True)
class Lease:
    """The job as this attempt leased it; `attempt` is the fencing token of every write."""

    job_id: str
    attempt: int
    engine: str
    options: PageOptions
    input_key: str


@dataclass(frozen=True)
class AttemptOutcome:
    """The end of an attempt: the job's status now, and whether another attempt should follow."""

    status: str
    retry: bool = False
    retry_in_s: int = 0


class LeaseLost(Exception):
    """The job was canceled or taken over by a newer attempt; this attempt must stop."""


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


@contextmanager
def heartbeat(context: PipelineContext, lease: Lease) -> Iterator[None]:
    """Refresh the job's heartbeat every HEARTBEAT_INTERVAL_S while the block runs.

    The engine may spend minutes on one page. Without this thread, a live attempt would look
    dead to the sweeper and to a redelivered task after LEASE_TTL_S.
    """
    stop = threading.Event()
    bound = structlog.contextvars.get_contextvars()

    def beat() -> None:
        structlog.contextvars.bind_contextvars(**bound)
        while not stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                with context.database.session() as session:
                    fenced = session.execute(_fenced_update(lease).values(heartbeat_at=utcnow()))
                if _rowcount(fenced) != 1:
                    return  # canceled or taken over; the attempt notices before its next page
            except Exception:
                log.warning("heartbeat.failed", exc_info=True)

    thread = threading.Thread(target=beat, name=f"ocrq-heartbeat-{lease.job_id}", daemon=True)
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
        if _rowcount(leased) != 1:
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
    if _rowcount(exhausted) == 1:
        record_job_finished(session, job.id, settings)


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
    # worker.pages builds on this module's page functions, so it is imported at call time.
    from worker.pages import finish_job as finish_planned_job
    from worker.pages import plan_pages, process_next

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
            _fenced_update(lease).values(pages_total=page_count, engine=engine_name)
        )
        if _rowcount(fenced) != 1:
            raise LeaseLost(lease.job_id)
        statement = select(Page.page_index).where(
            Page.job_id == lease.job_id, Page.status == PageStatus.SUCCEEDED
        )
        return set(session.scalars(statement))


def read_batch(
    context: PipelineContext, lease: Lease, engine: Engine, batch: list[PageInput]
) -> list[dict[str, Any]]:
    """Run the engine on several pages in one call, and store their figures.

    Returns the page rows' column values in batch order. When the batched call fails, each page
    is read again on its own with read_page, so one bad page fails alone.
    """
    if len(batch) == 1:
        return [read_page(context, lease, engine, batch[0].page_index, batch[0].image)]

    started_at = utcnow()
    batch_started = time.perf_counter()
    try:
        results = engine.run_pages(batch, lease.options)
    except SoftTimeLimitExceeded as exc:
        raise time_limit_error(context.settings) from exc
    except Exception:
        log.warning("batch.failed", pages=len(batch), stage="decode", exc_info=True)
        return [read_page(context, lease, engine, page.page_index, page.image) for page in batch]

    # Every page of the batch took the batch's time, so each row's timings total is that time.
    duration_ms = elapsed_ms(batch_started)
    values = []
    for result in results:
        log.info(
            "page.decoded",
            page=result.page_index,
            pages=len(batch),
            duration_ms=duration_ms,
            output_tokens=result.output_tokens,
            blocks=len(result.blocks),
            figures=len(result.figures),
        )
        store_figures(context.storage, lease.job_id, result)
        values.append(succeeded_page_values(result, 1, started_at, duration_ms))
    return values


def time_limit_error(settings: Settings) -> TransientError:
    """Return the error that ends an attempt which ran past OCRQ_TASK_TIME_LIMIT_S."""
    message = (
        f"The attempt ran past its time limit of {settings.task_time_limit_s} s "
        "(OCRQ_TASK_TIME_LIMIT_S)."
    )
    return TransientError(message, code="time_limit_exceeded")


def read_page(
    context: PipelineContext, lease: Lease, engine: Engine, page_index: int, image: Image.Image
) -> dict[str, Any]:
    """Run the engine on one page (retrying up to OCRQ_PAGE_MAX_ATTEMPTS), store its figures.

    Returns the column values of the page row, for a succeeded or a failed page.
    """
    max_tries = context.settings.page_max_attempts
    started_at = utcnow()
    for tries in range(1, max_tries + 1):
        page_started = time.perf_counter()
        try:
            result = engine.run_pages(
                [PageInput(image=image, page_index=page_index)], lease.options
            )[0]
        except SoftTimeLimitExceeded as exc:
            # The whole attempt is out of time, not this page, so the attempt ends here.
            raise time_limit_error(context.settings) from exc
        except Exception as exc:
            # The engine's own failure on this page (bad output, out of memory): the page
            # fails after its tries, the other pages go on.
            log.warning("page.failed", stage="decode", tries=tries, exc_info=True)
            if tries == max_tries:
                message = f"The engine failed on page {page_index + 1}: {type(exc).__name__}."
                return failed_page_values("engine_error", message, tries, started_at)
            continue

        duration_ms = elapsed_ms(page_started)
        log.info(
            "page.decoded",
            duration_ms=duration_ms,
            output_tokens=result.output_tokens,
            blocks=len(result.blocks),
            figures=len(result.figures),
        )
        store_figures(context.storage, lease.job_id, result)
        return succeeded_page_values(result, tries, started_at, duration_ms)
    raise AssertionError("unreachable: the loop returns on its last try")


def store_figures(storage: Storage, job_id: str, result: PageResult) -> None:
    for figure in result.figures:
        buffer = io.BytesIO()
        figure.image.convert("RGB").save(buffer, format="JPEG", quality=FIGURE_JPEG_QUALITY)
        storage.put_bytes(figure_key(job_id, figure.name), buffer.getvalue(), "image/jpeg")


def succeeded_page_values(
    result: PageResult, tries: int, started_at: datetime, duration_ms: int
) -> dict[str, Any]:
    stored = result.to_dict()
    stored.pop("markdown")
    timings = dict(result.timings_ms)
    timings.setdefault("total", duration_ms)
    stored["timings_ms"] = timings
    return {
        "status": PageStatus.SUCCEEDED,
        "attempts": tries,
        "width": result.width,
        "height": result.height,
        "markdown": result.markdown,
        "result": stored,
        "error_code": None,
        "error_message": None,
        "started_at": started_at,
        "finished_at": utcnow(),
    }


def failed_page_values(
    code: str, message: str, tries: int, started_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "status": PageStatus.FAILED,
        "attempts": tries,
        "markdown": None,
        "result": None,
        "error_code": code,
        "error_message": message,
        "started_at": started_at,
        "finished_at": utcnow(),
    }


def store_result(context: PipelineContext, lease: Lease) -> str:
    """Write result.json and result.md, then the job's final status; return that status."""
    with context.database.session() as session:
        pages = list(session.scalars(select(Page).where(Page.job_id == lease.job_id)))
    result = build_result(lease.job_id, pages)

    stage_started = time.perf_counter()
    encoded = _json_bytes(result)
    context.storage.put_bytes(result_json_key(lease.job_id), encoded, "application/json")
    context.storage.put_bytes(
        result_markdown_key(lease.job_id), result["markdown"].encode(), "text/markdown"
    )
    log.info(
        "stage.finished", stage="store", bytes=len(encoded), duration_ms=elapsed_ms(stage_started)
    )

    status = final_job_status([PageStatus(page.status) for page in pages])
    failed = [page for page in pages if page.status != PageStatus.SUCCEEDED]
    failed.sort(key=lambda page: page.page_index)
    code, message = summarize_failures(failed, len(pages), status)
    finish_job(context, lease, status, code, message)
    return status


def summarize_failures(
    failed: list[Page], page_count: int, status: JobStatus
) -> tuple[str | None, str | None]:
    """Return the job's error code and message for its failed pages (None, None when none)."""
    if not failed:
        return None, None
    numbers = ", ".join(str(page.page_index + 1) for page in failed)
    if status == JobStatus.PARTIAL:
        return "pages_failed", f"{len(failed)} of {page_count} pages failed: page {numbers}."
    codes = {page.error_code for page in failed}
    if len(codes) == 1:
        return codes.pop(), failed[0].error_message
    return "pages_failed", f"All {page_count} pages failed: page {numbers}."


def finish_job(
    context: PipelineContext,
    lease: Lease,
    status: str,
    error_code: str | None,
    error_message: str | None,
) -> None:
    """Record the final status under this attempt's fence; raise LeaseLost if it was taken."""
    with context.database.session() as session:
        fenced = session.execute(
            _fenced_update(lease).values(
                status=status,
                error_code=error_code,
                error_message=error_message,
                finished_at=utcnow(),
            )
        )
        if _rowcount(fenced) != 1:
            raise LeaseLost(lease.job_id)
        # The webhook outbox rows commit with the status, or not at all.
        record_job_finished(session, lease.job_id, context.settings)


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
        released = session.execute(_fenced_update(lease).values(**values))
        if final and _rowcount(released) == 1:
            record_job_finished(session, lease.job_id, context.settings)
    if _rowcount(released) != 1:
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


def check_lease(context: PipelineContext, lease: Lease) -> None:
    """Raise LeaseLost when the job was canceled or taken over since the last page."""
    with context.database.session() as session:
        row = session.execute(select(Job.status, Job.attempt).where(Job.id == lease.job_id)).first()
    if row is None or row.status != JobStatus.RUNNING or row.attempt != lease.attempt:
        raise LeaseLost(lease.job_id)


def current_status(context: PipelineContext, job_id: str) -> str:
    with context.database.session() as session:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status or "missing"


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _fenced_update(lease: Lease) -> Any:
    return update(Job).where(
        Job.id == lease.job_id, Job.attempt == lease.attempt, Job.status == JobStatus.RUNNING
    )


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode()

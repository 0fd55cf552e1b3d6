"""Run the pages of jobs one claim at a time, on any worker, and finish a job with its last page.

A job's first task (worker.pipeline.process_job) counts its pages and inserts one pending page
row per page. Each page then runs under its own lease (core.scheduling.claim_pages), and
pages.lease_token fences its writes. A page row and jobs.pages_done change in one transaction
that holds the job row's lock, so exactly one writer counts the job's last page, and that
writer finishes the job. A canceled job's pages are never claimed, and a page still running
when its job is canceled writes nothing.

Celery runs process_next() once per ocrq.process_page message. `ocrq run` and the tests call it
in a loop for one job, in-process, through the same functions.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from core.documents import Limits
from core.errors import InputError
from core.logging import get_logger
from core.results import store_page_json
from core.scheduling import (
    PAGE_HEARTBEAT_INTERVAL_S,
    PageClaim,
    claim_pages,
    waiting_pages,
)
from core.states import JobStatus, PageStatus
from core.storage import Storage
from core.tables import Job, Page, utcnow
from models.engine import PageInput, PageOptions
from worker.context import PipelineContext, ProgressCallback
from worker.decode import failed_page_values, read_batch
from worker.job_result import store_result
from worker.lease import Lease, LeaseLost, heartbeat_thread
from worker.rasterize import render_page

# Returns the local path of a job's stored input, given (job_id, input_key).
DocumentProvider = Callable[[str, str], Path]

log = get_logger(__name__)


@dataclass(frozen=True)
class PageOutcome:
    """The result of one process_next() call.

    `ran` is False when no page could start: `waiting` then counts the pages that wait for a
    tenant's fair-share slot (the caller should try again shortly) and is 0 when none wait.
    """

    ran: bool
    waiting: int = 0
    job_id: str | None = None
    job_status: str | None = None


class PageLeaseLost(Exception):
    """The page's job was canceled or finished, or another worker re-claimed the page."""


def plan_pages(context: PipelineContext, job_id: str, page_count: int) -> int:
    """Insert a pending row for each page of the job without one; return the claimable pages."""
    rows = [
        {"job_id": job_id, "page_index": index, "status": PageStatus.PENDING, "attempts": 0}
        for index in range(page_count)
    ]
    with context.database.session() as session:
        dialect = session.get_bind().dialect.name
        insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
        if rows:
            session.execute(
                insert(Page)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["job_id", "page_index"])
            )
    return waiting_pages(context.database, job_id=job_id)


def process_next(
    context: PipelineContext,
    documents: DocumentProvider,
    *,
    job_id: str | None = None,
    password: str | None = None,
    on_page: ProgressCallback | None = None,
    fair_share: bool = True,
) -> PageOutcome:
    """Claim the best claimable pages (of `job_id` only, when given), run them, write them.

    When those were the job's last pages, this call also finishes the job. Raises what the
    engine, storage or database raise beyond a page's own failure; the claimed pages go back
    to pending first, so a later call runs them again.
    """
    settings = context.settings
    max_pages = batch_size(context, job_id)
    claim = claim_pages(
        context.database, settings, job_id=job_id, max_pages=max_pages, fair_share=fair_share
    )
    if claim is None:
        return PageOutcome(ran=False, waiting=waiting_pages(context.database, job_id=job_id))

    with (
        structlog.contextvars.bound_contextvars(job_id=claim.job_id, pages=claim.page_indexes),
        page_heartbeat(context, claim),
    ):
        try:
            finished = run_claim(context, claim, documents, password, on_page)
        except PageLeaseLost:
            log.info("pages.stopped", reason="lease_lost")
            return PageOutcome(ran=True, job_id=claim.job_id)
        except BaseException:
            release_pages(context, claim)
            raise

    status = finish_job(context, claim.job_id) if finished else None
    return PageOutcome(ran=True, job_id=claim.job_id, job_status=status)


def batch_size(context: PipelineContext, job_id: str | None) -> int:
    """Return how many pages to claim at once: the engine's max_batch_pages, else 1.

    Without `job_id` the configured engine decides; a job on another engine then still gets
    its pages in batches of that size, which its engine reads as it can.
    """
    name = context.settings.engine
    if job_id is not None:
        with context.database.session() as session:
            name = session.scalar(select(Job.engine).where(Job.id == job_id)) or name
    try:
        engine = context.engines(name)
    except Exception:
        # A claimed page then fails on the same error, and its claims are counted.
        log.warning("engine.load_failed", engine=name, exc_info=True)
        return 1
    return max(1, int(getattr(engine, "max_batch_pages", 1)))


def run_claim(
    context: PipelineContext,
    claim: PageClaim,
    documents: DocumentProvider,
    password: str | None,
    on_page: ProgressCallback | None,
) -> bool:
    """Read and write the claimed pages; return True when the job's last page was written."""
    lease = job_lease(context, claim.job_id)
    settings = context.settings
    limits = Limits.from_settings(settings)

    # A page claimed more often than OCRQ_MAX_ATTEMPTS keeps killing its worker: fail it alone.
    batch: list[PageInput] = []
    written: dict[int, dict[str, Any]] = {}
    path: Path | None = None
    for index, attempts in zip(claim.page_indexes, claim.attempts, strict=True):
        if attempts > settings.max_attempts:
            message = f"Page {index + 1} was started {attempts - 1} times without finishing."
            written[index] = failed_page_values("page_attempts_exhausted", message, attempts - 1)
            continue
        path = path or documents(claim.job_id, lease.input_key)
        try:
            image = render_page(path, index, limits, password)
        except InputError as exc:
            log.warning("page.failed", page=index, stage="rasterize", error_code=exc.code)
            written[index] = failed_page_values(exc.code, exc.message, tries=0)
            continue
        batch.append(PageInput(image=image, page_index=index))

    if batch:
        engine = context.engines(lease.engine)
        for page, values in zip(batch, read_batch(context, lease, engine, batch), strict=True):
            written[page.page_index] = values

    last = False
    for index, token, attempts in zip(
        claim.page_indexes, claim.tokens, claim.attempts, strict=True
    ):
        # pages.attempts counts engine tries on every claim; a claim that died made one.
        values = {**written[index], "attempts": written[index]["attempts"] + attempts - 1}
        pages_done, pages_total = write_claimed_page(context, claim.job_id, index, token, values)
        if on_page is not None:
            on_page(pages_done, pages_total)
        last = last or pages_done >= pages_total
    return last


def job_lease(context: PipelineContext, job_id: str) -> Lease:
    """Return the job's options as a Lease under its current attempt, for the engine call."""
    with context.database.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            raise PageLeaseLost(job_id)
        options = PageOptions(mode=job.mode, task=job.task, target=job.target)  # type: ignore[arg-type]
        return Lease(job.id, job.attempt, job.engine, options, job.input_key)


def write_claimed_page(
    context: PipelineContext, job_id: str, page_index: int, token: int, values: dict[str, Any]
) -> tuple[int, int]:
    """Write the page row and recount pages_done in one transaction; return (done, total).

    The job row is locked first, so page writes of one job are serialised and the count each
    one sees is exact. Raises PageLeaseLost, writing nothing, when the job is no longer running
    or the page's lease_token moved on.
    """
    with context.database.session() as session:
        job = session.execute(
            select(Job.pages_total)
            .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
            .with_for_update()
        ).first()
        if job is None:
            raise PageLeaseLost(job_id)
        values = {**values, "heartbeat_at": utcnow()}
        written = session.execute(fenced_page_update(job_id, page_index, token).values(**values))
        if int(written.rowcount) != 1:  # type: ignore[attr-defined]
            raise PageLeaseLost(job_id)

        pages_done = int(
            session.scalar(
                select(func.count())
                .select_from(Page)
                .where(Page.job_id == job_id)
                .where(Page.status.in_([PageStatus.SUCCEEDED, PageStatus.FAILED]))
            )
            or 0
        )
        session.execute(
            update(Job).where(Job.id == job_id).values(pages_done=pages_done, heartbeat_at=utcnow())
        )

    # The page's JSON is stored once its row is committed, so storage never runs ahead of it.
    store_page_json(context.storage, job_id, Page(job_id=job_id, page_index=page_index, **values))
    return pages_done, int(job.pages_total or 0)


def finish_job(context: PipelineContext, job_id: str) -> str | None:
    """Store the result and final status once every page has ended; return that status.

    Returns None when pages remain, the job is no longer running, or another worker finished
    it first. The final status, and the webhook outbox rows with it, commit once.
    """
    with context.database.session() as session:
        job = session.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING:
            return None
        unfinished = session.scalar(
            select(func.count())
            .select_from(Page)
            .where(Page.job_id == job_id)
            .where(Page.status.not_in([PageStatus.SUCCEEDED, PageStatus.FAILED]))
        )
        if unfinished or job.pages_done < (job.pages_total or 0):
            return None
        options = PageOptions(mode=job.mode, task=job.task, target=job.target)  # type: ignore[arg-type]
        lease = Lease(job.id, job.attempt, job.engine, options, job.input_key)
    try:
        status = store_result(context, lease)
    except LeaseLost:
        return None
    log.info("job.finished", job_id=job_id, status=status)
    return status


def release_pages(context: PipelineContext, claim: PageClaim) -> None:
    """Put the claimed pages back to pending, unless another worker has re-claimed them."""
    with context.database.session() as session:
        for index, token in zip(claim.page_indexes, claim.tokens, strict=True):
            session.execute(
                fenced_page_update(claim.job_id, index, token).values(
                    status=PageStatus.PENDING, heartbeat_at=None
                )
            )


@contextmanager
def page_heartbeat(context: PipelineContext, claim: PageClaim) -> Iterator[None]:
    """Refresh the claimed pages' and their job's heartbeat while the block runs."""

    def beat() -> bool:
        now = utcnow()
        with context.database.session() as session:
            for index, token in zip(claim.page_indexes, claim.tokens, strict=True):
                session.execute(
                    fenced_page_update(claim.job_id, index, token).values(heartbeat_at=now)
                )
            session.execute(
                update(Job)
                .where(Job.id == claim.job_id, Job.status == JobStatus.RUNNING)
                .values(heartbeat_at=now)
            )
        # Keep beating: a page whose lease moved on is caught when it is written.
        return True

    name = f"ocrq-page-heartbeat-{claim.job_id}"
    with heartbeat_thread(name, PAGE_HEARTBEAT_INTERVAL_S, beat):
        yield


def fenced_page_update(job_id: str, page_index: int, token: int) -> Any:
    """Return an UPDATE of the page that matches only while this claim still runs it."""
    return (
        update(Page)
        .where(Page.job_id == job_id, Page.page_index == page_index)
        .where(Page.lease_token == token, Page.status == PageStatus.RUNNING)
    )


class InputCache:
    """Local copies of the latest jobs' inputs, so a worker downloads each document once."""

    def __init__(self, storage: Storage, max_documents: int = 2) -> None:
        self.storage = storage
        self.max_documents = max_documents
        self._folder = tempfile.TemporaryDirectory(prefix="ocrq-inputs-")
        self._paths: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, job_id: str, input_key: str) -> Path:
        with self._lock:
            path = self._paths.get(job_id)
            if path is not None:
                self._paths.move_to_end(job_id)
                return path
            path = Path(self._folder.name) / job_id
            self.storage.download_to(input_key, path)
            self._paths[job_id] = path
            while len(self._paths) > self.max_documents:
                _, oldest = self._paths.popitem(last=False)
                oldest.unlink(missing_ok=True)
            return path

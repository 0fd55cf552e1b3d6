"""worker.pipeline on real corpus documents with a scripted engine."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy import func, select, update

from core.celery_app import set_embedded_runner
from core.errors import TransientError
from core.settings import Settings
from core.states import JobStatus
from core.storage import Storage, figure_key, result_json_key, result_markdown_key
from core.tables import Job, Page, utcnow
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.lease import lease_job
from worker.pipeline import process_job


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def harness(make_settings: Callable[..., Settings], engine: FakeEngine) -> Iterator[Harness]:
    built = make_harness(make_settings(pdf_render_dpi=36), engine)
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def load_job(harness: Harness, job_id: str) -> Job:
    return harness.service.get_job(job_id)


def page_rows(harness: Harness, job_id: str) -> list[Page]:
    with harness.database.session() as session:
        statement = select(Page).where(Page.job_id == job_id).order_by(Page.page_index)
        return list(session.scalars(statement))


def test_single_page_tiff_succeeds_and_stores_result(harness: Harness, corpus_dir: Path) -> None:
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    outcome = process_job(job_id, harness.context)

    job = load_job(harness, job_id)
    assert outcome.status == JobStatus.SUCCEEDED
    assert job.status == JobStatus.SUCCEEDED
    assert (job.pages_total, job.pages_done, job.attempt) == (1, 1, 1)
    assert job.finished_at is not None
    stored = json.loads(harness.storage.get_bytes(result_json_key(job_id)))
    assert stored["markdown"] == "page 1"
    assert stored["pages"][0]["width"] == 640
    assert harness.storage.get_bytes(result_markdown_key(job_id)) == b"page 1"


def test_multipage_pdf_writes_one_row_per_page(harness: Harness, corpus_dir: Path) -> None:
    job_id = harness.insert_job(corpus_dir / "multipage.pdf")

    process_job(job_id, harness.context)

    rows = page_rows(harness, job_id)
    result = harness.service.get_result(job_id)
    assert [row.page_index for row in rows] == [0, 1, 2, 3, 4, 5]
    assert load_job(harness, job_id).pages_done == 6
    assert result["markdown"].split("\n\n<--- Page Split --->\n\n") == [
        f"page {number}" for number in range(1, 7)
    ]


def test_invalid_pdf_fails_with_code_and_no_retry(harness: Harness, corpus_dir: Path) -> None:
    job_id = harness.insert_job(corpus_dir / "invalid.pdf")

    outcome = process_job(job_id, harness.context)

    job = load_job(harness, job_id)
    assert outcome.retry is False
    assert job.status == JobStatus.FAILED
    assert job.error_code == "unreadable_document"
    assert job.attempt == 1


def test_failing_page_makes_job_partial(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    engine.failing_pages = {1}
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    outcome = process_job(job_id, harness.context)

    job = load_job(harness, job_id)
    failed = page_rows(harness, job_id)[1]
    assert outcome.status == JobStatus.PARTIAL
    assert job.error_code == "pages_failed"
    assert job.error_message == "1 of 3 pages failed: page 2."
    assert failed.error_code == "engine_error"
    assert failed.attempts == harness.settings.page_max_attempts
    assert engine.calls.count(1) == harness.settings.page_max_attempts
    assert "<!-- ocrq: page 2 not read (engine_error) -->" in harness.service.get_result_markdown(
        job_id
    )


def test_all_pages_failing_fails_job(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    engine.failing_pages = {0}
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    process_job(job_id, harness.context)

    job = load_job(harness, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error_code == "engine_error"


def test_figures_are_stored_under_job_results(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    engine.figure_pages = {0}
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    process_job(job_id, harness.context)

    assert harness.storage.get_bytes(figure_key(job_id, "0_0.jpg")).startswith(b"\xff\xd8")


def test_second_delivery_of_finished_job_is_dropped(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")
    process_job(job_id, harness.context)

    outcome = process_job(job_id, harness.context)

    assert outcome.status == "dropped"
    assert len(page_rows(harness, job_id)) == 3
    assert len(engine.calls) == 3
    assert load_job(harness, job_id).attempt == 1


class WorkerKilled(BaseException):
    """Stands in for a worker process dying mid-job (not an Exception, so nothing catches it)."""


def test_redelivery_after_crash_resumes_without_duplicates(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    def die_after_two(pages_done: int, _total: int) -> None:
        if pages_done == 2:
            raise WorkerKilled

    with pytest.raises(WorkerKilled):
        process_job(job_id, harness.context, on_page=die_after_two)
    live_duplicate = process_job(job_id, harness.context)
    with harness.database.session() as session:
        stale = utcnow() - timedelta(seconds=harness.settings.task_time_limit_s + 1)
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=stale))
    resumed = process_job(job_id, harness.context)

    assert live_duplicate.status == "dropped"
    assert resumed.status == JobStatus.SUCCEEDED
    assert [row.page_index for row in page_rows(harness, job_id)] == [0, 1, 2]
    assert engine.calls == [0, 1, 2]
    assert load_job(harness, job_id).attempt == 2


def test_cancel_stops_job_between_pages(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    def cancel_after_one(pages_done: int, _total: int) -> None:
        if pages_done == 1:
            harness.service.cancel_job(job_id)

    outcome = process_job(job_id, harness.context, on_page=cancel_after_one)

    assert outcome.status == JobStatus.CANCELED
    assert load_job(harness, job_id).status == JobStatus.CANCELED
    assert engine.calls == [0]
    # The cancel ends the pages that had not started, so none stays pending.
    assert [row.status for row in page_rows(harness, job_id)] == [
        "succeeded",
        "canceled",
        "canceled",
    ]


class FlakyStorage:
    """Wraps a storage; the first `failures` downloads raise TransientError."""

    def __init__(self, inner: Storage, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def download_to(self, key: str, path: Path) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise TransientError("storage briefly unreachable")
        self.inner.download_to(key, path)


def test_transient_error_releases_job_for_retry(
    make_settings: Callable[..., Settings], engine: FakeEngine, corpus_dir: Path
) -> None:
    settings = make_settings()
    harness = make_harness(settings, engine)
    harness = make_harness(settings, engine, storage=FlakyStorage(harness.storage, failures=1))
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    first = process_job(job_id, harness.context)
    queued = load_job(harness, job_id)
    second = process_job(job_id, harness.context)
    set_embedded_runner(None)

    assert first.retry is True
    assert queued.status == JobStatus.QUEUED
    assert queued.error_code == "transient_error"
    assert second.status == JobStatus.SUCCEEDED
    assert load_job(harness, job_id).error_code is None


def test_errors_fail_job_after_max_attempts(
    make_settings: Callable[..., Settings], engine: FakeEngine, corpus_dir: Path
) -> None:
    settings = make_settings(max_attempts=2)
    harness = make_harness(settings, engine)
    harness = make_harness(settings, engine, storage=FlakyStorage(harness.storage, failures=5))
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    outcomes = [process_job(job_id, harness.context) for _ in range(3)]
    set_embedded_runner(None)

    assert [outcome.retry for outcome in outcomes] == [True, False, False]
    assert outcomes[1].status == JobStatus.FAILED
    assert outcomes[2].status == "dropped"
    assert load_job(harness, job_id).error_code == "transient_error"


def test_lease_is_held_by_one_attempt(harness: Harness, corpus_dir: Path) -> None:
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    first = lease_job(harness.context, job_id)
    second = lease_job(harness.context, job_id)

    assert first is not None
    assert first.attempt == 1
    assert second is None


def test_pipeline_on_postgresql_upserts_pages(
    make_settings: Callable[..., Settings],
    postgres_url: str,
    engine: FakeEngine,
    corpus_dir: Path,
) -> None:
    harness = make_harness(make_settings(database_url=postgres_url), engine)
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    process_job(job_id, harness.context)
    with harness.database.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=JobStatus.QUEUED))
    process_job(job_id, harness.context)
    set_embedded_runner(None)

    with harness.database.session() as session:
        count = session.scalar(select(func.count()).select_from(Page).where(Page.job_id == job_id))
    assert count == 3
    assert load_job(harness, job_id).status == JobStatus.SUCCEEDED
    harness.database.dispose()


def test_soft_time_limit_ends_attempt_not_page(
    harness: Harness, engine: FakeEngine, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_time(*_args: object) -> list[object]:
        raise SoftTimeLimitExceeded

    monkeypatch.setattr(engine, "run_pages", out_of_time)
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    outcome = process_job(job_id, harness.context)

    job = load_job(harness, job_id)
    assert outcome.retry is True
    assert job.status == JobStatus.QUEUED
    assert job.error_code == "time_limit_exceeded"
    # The page goes back to pending for the next attempt, with nothing written.
    assert [(row.status, row.markdown) for row in page_rows(harness, job_id)] == [("pending", None)]


def test_concurrent_leases_on_postgresql_pick_one(
    make_settings: Callable[..., Settings], postgres_url: str, corpus_dir: Path
) -> None:
    """Eight threads race for one queued job; the conditional UPDATE lets exactly one win."""
    harness = make_harness(make_settings(database_url=postgres_url), FakeEngine())
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    with ThreadPoolExecutor(max_workers=8) as pool:
        leases = list(pool.map(lambda _: lease_job(harness.context, job_id), range(8)))
    set_embedded_runner(None)

    winners = [lease for lease in leases if lease is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 1
    assert load_job(harness, job_id).attempt == 1
    harness.database.dispose()


def test_heartbeat_refreshes_during_long_page(
    harness: Harness, engine: FakeEngine, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page that outlasts the heartbeat interval still moves jobs.heartbeat_at forward."""
    monkeypatch.setattr("worker.lease.HEARTBEAT_INTERVAL_S", 0.05)
    job_id = harness.insert_job(corpus_dir / "phototest.tif")
    seen: list[object] = []
    read_page = engine.run_pages

    def slow_page(*args: object) -> object:
        seen.append(load_job(harness, job_id).heartbeat_at)
        time.sleep(0.5)
        seen.append(load_job(harness, job_id).heartbeat_at)
        return read_page(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "run_pages", slow_page)

    outcome = process_job(job_id, harness.context)

    assert outcome.status == JobStatus.SUCCEEDED
    assert seen[1] > seen[0]  # type: ignore[operator]

"""The sweeper wakes pending pages whose wake message was lost; a cancel ends pending pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.tables import Job, Page, utcnow
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pages import plan_pages


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = make_harness(make_settings(page_wake_after_s=30), FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


@pytest.fixture
def sent_pages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    sent: list[tuple[str, int]] = []

    def record(job_id: str, count: int, _settings: Settings, countdown_s: float = 0) -> None:
        sent.append((job_id, count))

    monkeypatch.setattr("core.jobs.enqueue_pages", record)
    return sent


def running_job(harness: Harness, corpus_dir: Path, quiet_s: int, pages: int = 3) -> str:
    """Return a running job with `pages` pending page rows and no activity for `quiet_s`."""
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    with harness.database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(
                status=JobStatus.RUNNING,
                attempt=1,
                pages_total=pages,
                heartbeat_at=utcnow() - timedelta(seconds=quiet_s),
            )
        )
    plan_pages(harness.context, job.id, pages)
    return job.id


def page_statuses(harness: Harness, job_id: str) -> list[str]:
    with harness.database.session() as session:
        return list(session.scalars(select(Page.status).where(Page.job_id == job_id)))


def test_sweep_wakes_pending_pages_of_quiet_job(
    harness: Harness, corpus_dir: Path, sent_pages: list[tuple[str, int]]
) -> None:
    quiet = running_job(harness, corpus_dir, quiet_s=31)
    busy = running_job(harness, corpus_dir, quiet_s=5)

    harness.service.sweep()

    assert sent_pages == [(quiet, 3)]
    assert busy not in {job_id for job_id, _ in sent_pages}


def test_sweep_wakes_no_page_when_turned_off(
    make_settings: Callable[..., Settings], corpus_dir: Path, sent_pages: list[tuple[str, int]]
) -> None:
    harness = make_harness(make_settings(page_wake_after_s=0), FakeEngine())
    try:
        running_job(harness, corpus_dir, quiet_s=3600)
        harness.service.sweep()
    finally:
        set_embedded_runner(None)
        harness.database.dispose()

    assert sent_pages == []


def test_sweep_caps_wake_messages_per_round(
    harness: Harness,
    corpus_dir: Path,
    sent_pages: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("core.jobs.PAGE_WAKE_MAX_PER_SWEEP", 4)
    first = running_job(harness, corpus_dir, quiet_s=100)
    second = running_job(harness, corpus_dir, quiet_s=60)

    harness.service.sweep()

    assert sent_pages == [(first, 3), (second, 1)]


def test_cancel_marks_pending_and_running_pages_canceled(
    harness: Harness, corpus_dir: Path, sent_pages: list[tuple[str, int]]
) -> None:
    job_id = running_job(harness, corpus_dir, quiet_s=3600)
    with harness.database.session() as session:
        session.execute(
            update(Page)
            .where(Page.job_id == job_id, Page.page_index == 0)
            .values(status=PageStatus.RUNNING, heartbeat_at=utcnow())
        )

    harness.service.cancel_job(job_id)
    harness.service.sweep()

    assert page_statuses(harness, job_id) == [PageStatus.CANCELED] * 3
    assert sent_pages == []

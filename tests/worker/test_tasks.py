"""worker.tasks: the registered Celery task runs the pipeline and is safe to deliver twice."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select

from core.celery_app import (
    TASK_PROCESS_JOB,
    TASK_PROCESS_PAGE,
    create_celery_app,
    set_embedded_runner,
)
from core.settings import Settings
from core.states import JobStatus
from core.tables import Page
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker import runner
from worker.tasks import register_tasks


@pytest.fixture
def harness(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    built = make_harness(make_settings(), FakeEngine())
    monkeypatch.setattr(runner, "_process_context", built.context)
    yield built
    set_embedded_runner(None)
    built.database.dispose()


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Celery:
    celery_app = create_celery_app(make_settings(broker_url="memory://"))
    register_tasks(celery_app)
    return celery_app


@pytest.mark.parametrize("name", [TASK_PROCESS_JOB, TASK_PROCESS_PAGE])
def test_task_is_registered_with_late_acks(app: Celery, name: str) -> None:
    task = app.tasks[name]

    assert task.acks_late is True
    assert task.reject_on_worker_lost is True
    assert task.ignore_result is True


def test_task_delivered_twice_writes_pages_once(
    app: Celery, harness: Harness, corpus_dir: Path
) -> None:
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")
    job_task = app.tasks[TASK_PROCESS_JOB]
    page_task = app.tasks[TASK_PROCESS_PAGE]

    first = job_task.apply(args=[job_id]).get()
    second = job_task.apply(args=[job_id]).get()
    # Four page deliveries for three pages: the last one finds nothing to run.
    pages = [page_task.apply(args=[job_id]).get() for _ in range(4)]

    with harness.database.session() as session:
        statement = select(func.count()).select_from(Page).where(Page.job_id == job_id)
        page_count = session.scalar(statement)
    assert first == JobStatus.RUNNING
    assert second == "dropped"
    assert pages == ["ran", "ran", JobStatus.SUCCEEDED, "idle"]
    assert page_count == 3
    assert harness.service.get_job(job_id).pages_done == 3

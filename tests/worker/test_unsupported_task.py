"""A worker fails a job whose task its engine cannot run: once, without retry or page tries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus
from core.tables import Page
from tests.worker.fakes import FakeEngine, make_harness
from worker.pipeline import process_job


@dataclass
class TextOnlyEngine(FakeEngine):
    supported_tasks: tuple[str, ...] = ("markdown", "ocr")


def test_unsupported_task_fails_job_without_retry(
    make_settings: Callable[..., Settings], corpus_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = TextOnlyEngine()
    # An explicit engine skips the submission check, as a job queued before a settings change.
    harness = make_harness(make_settings(engine="deepseek-ocr"), engine)
    try:
        job = harness.service.create_job(corpus_dir / "phototest.tif", task="figure")

        outcome = process_job(job.id, harness.context, fan_out=True)

        finished = harness.service.get_job(job.id)
        with harness.database.session() as session:
            pages = session.scalar(
                select(func.count()).select_from(Page).where(Page.job_id == job.id)
            )
    finally:
        set_embedded_runner(None)
        harness.database.dispose()

    assert (outcome.status, outcome.retry) == (JobStatus.FAILED, False)
    assert (finished.status, finished.error_code) == (JobStatus.FAILED, "unsupported_task")
    assert "figure" in (finished.error_message or "")
    assert (finished.attempt, pages, engine.calls) == (1, 0, [])
    assert "Traceback" not in caplog.text


def test_rapidocr_lists_its_tasks() -> None:
    rapidocr = pytest.importorskip("models.rapidocr_engine")

    assert "figure" not in rapidocr.RapidOcrEngine.supported_tasks
    assert "markdown" in rapidocr.RapidOcrEngine.supported_tasks

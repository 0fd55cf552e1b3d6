"""A real `ocrq worker` finishes pages whose wake messages never reached Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import update

from core.celery_app import set_embedded_runner
from core.db import Database
from core.jobs import JobService
from core.settings import Settings
from core.states import JobStatus
from core.storage import open_storage
from core.tables import Job, utcnow
from tests.worker.fakes import FakeEngine
from tests.worker.test_celery_worker import OCRQ, WORKER_STOP_TIMEOUT_S, service_settings
from worker.context import PipelineContext
from worker.pages import plan_pages

__all__ = ["service_settings"]
WAKE_AFTER_S = 2
# The worker's start-up, one sweep period and a few rapidocr pages, with room to spare.
RECOVERY_TIMEOUT_S = 60


@pytest.fixture
def waking_worker(service_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env.update(
        {
            "OCRQ_DATA_DIR": str(service_settings.data_dir),
            "OCRQ_DATABASE_URL": str(service_settings.database_url),
            "OCRQ_BROKER_URL": str(service_settings.broker_url),
            "OCRQ_STORAGE_URL": str(service_settings.storage_url),
            "OCRQ_S3_ENDPOINT_URL": str(service_settings.s3_endpoint_url),
            "OCRQ_ENGINE": "rapidocr",
            "OCRQ_PAGE_WAKE_AFTER_S": str(WAKE_AFTER_S),
        }
    )
    with (tmp_path / "worker.log").open("w") as log_file:
        process = subprocess.Popen(
            [str(OCRQ), "worker", "--pool", "solo"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        yield process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_sweeper_wakes_pages_planned_without_messages(
    service_settings: Settings,
    waking_worker: subprocess.Popen[str],
    corpus_dir: Path,
    tmp_path: Path,
) -> None:
    # Jobs are created and planned without the broker: no message of theirs is ever sent.
    offline = service_settings.model_copy(update={"broker_url": None})
    database = Database(service_settings.resolved_database_url)
    service = JobService(offline, database, open_storage(service_settings))
    set_embedded_runner(lambda _job_id: None)
    try:
        job = service.create_job(corpus_dir / "multipage.tiff")
    finally:
        set_embedded_runner(None)
    pages = int(job.pages_total or 0)
    with database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job.id)
            .values(status=JobStatus.RUNNING, attempt=1, pages_total=pages, heartbeat_at=utcnow())
        )
    context = PipelineContext(offline, database, service.storage, FakeEngine)
    plan_pages(context, job.id, pages)

    log_path = tmp_path / "worker.log"
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    finished = service.get_job(job.id)
    while time.monotonic() < deadline and not JobStatus(finished.status).is_final:
        assert waking_worker.poll() is None, log_path.read_text()[-3000:]
        time.sleep(0.5)
        finished = service.get_job(job.id)
    database.dispose()

    assert finished.status == JobStatus.SUCCEEDED, log_path.read_text()[-3000:]
    assert finished.pages_done == pages > 1

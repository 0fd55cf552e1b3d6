"""One job end to end through a real `ocrq worker` on Redis, PostgreSQL and moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.db import Database, upgrade_database
from core.jobs import JobService
from core.settings import Settings
from core.states import JobStatus
from core.storage import open_storage, result_json_key
from tests.conftest import S3_BUCKET
from tests.textmetrics import character_error_rate

OCRQ = Path(sys.executable).with_name("ocrq")
JOB_TIMEOUT_S = 90
WORKER_STOP_TIMEOUT_S = 20


@pytest.fixture
def service_settings(
    tmp_path: Path, postgres_url: str, redis_url: str, s3_endpoint_url: str
) -> Settings:
    """Settings of a deployed service: PostgreSQL, Redis broker, S3 storage, rapidocr engine."""
    pytest.importorskip("models.rapidocr_engine")
    upgrade_database(postgres_url)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=postgres_url,
        broker_url=redis_url,
        storage_url=f"s3://{S3_BUCKET}/e2e-{uuid.uuid4().hex[:8]}",
        s3_endpoint_url=s3_endpoint_url,
        engine="rapidocr",
        log_level="INFO",
    )


@pytest.fixture
def worker_process(service_settings: Settings, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """An `ocrq worker` subprocess (prefork, one child) configured by environment variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env.update(
        {
            "OCRQ_DATA_DIR": str(service_settings.data_dir),
            "OCRQ_DATABASE_URL": str(service_settings.database_url),
            "OCRQ_BROKER_URL": str(service_settings.broker_url),
            "OCRQ_STORAGE_URL": str(service_settings.storage_url),
            "OCRQ_S3_ENDPOINT_URL": str(service_settings.s3_endpoint_url),
            "OCRQ_ENGINE": "rapidocr",
        }
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [str(OCRQ), "worker", "--pool", "prefork", "--concurrency", "1"],
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


def wait_for_final_status(service: JobService, job_id: str, worker: subprocess.Popen[str]) -> str:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        status = service.get_job(job_id).status
        if JobStatus(status).is_final:
            return status
        assert worker.poll() is None, "the worker exited before finishing the job"
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish within {JOB_TIMEOUT_S} s")


def test_worker_processes_job_from_broker(
    service_settings: Settings,
    worker_process: subprocess.Popen[str],
    corpus_dir: Path,
    tmp_path: Path,
) -> None:
    service = JobService(
        service_settings,
        Database(service_settings.resolved_database_url),
        open_storage(service_settings),
    )
    job = service.create_job(corpus_dir / "phototest.tif", filename="phototest.tif")

    status = wait_for_final_status(service, job.id, worker_process)

    finished = service.get_job(job.id)
    stored = json.loads(service.storage.get_bytes(result_json_key(job.id)))
    expected = (corpus_dir / "phototest.gt.txt").read_text(encoding="utf-8")
    log_text = (tmp_path / "worker.log").read_text()
    assert job.enqueued_at is not None
    assert status == JobStatus.SUCCEEDED, log_text[-3000:]
    assert (finished.attempt, finished.pages_done, finished.engine) == (1, 1, "rapidocr")
    assert character_error_rate(expected, stored["markdown"]) <= 0.02
    assert '"event": "job.finished"' in log_text
    service.database.dispose()

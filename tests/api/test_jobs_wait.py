"""GET /v1/jobs/{id}?wait=S: long-polls until the job changes, and carries Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from core.db import Database
from core.states import JobStatus
from core.tables import Job


def submit(client: TestClient, path: Path) -> str:
    with path.open("rb") as handle:
        response = client.post("/v1/jobs", files={"file": (path.name, handle)})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def set_job(database_url: str, job_id: str, after_s: float = 0, **values: Any) -> threading.Thread:
    """Update the job row after `after_s` seconds, from a thread."""

    def write() -> None:
        time.sleep(after_s)
        database = Database(database_url)
        with database.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(**values))
        database.dispose()

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def timed_get(client: TestClient, url: str) -> tuple[Any, float]:
    started = time.monotonic()
    response = client.get(url)
    return response, time.monotonic() - started


def test_wait_returns_when_pages_done_changes(
    make_client: Callable[..., TestClient], api_database_url: str, corpus_dir: Path
) -> None:
    client = make_client()
    job_id = submit(client, corpus_dir / "phototest.tif")
    writer = set_job(api_database_url, job_id, after_s=0.5, status="running", pages_done=1)

    response, elapsed_s = timed_get(client, f"/v1/jobs/{job_id}?wait=10")
    writer.join()

    assert response.status_code == 200
    assert response.json()["pages_done"] == 1
    assert response.headers["Retry-After"] == "2"
    assert 0.4 <= elapsed_s < 3


def test_wait_times_out_with_unchanged_job(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    job_id = submit(client, corpus_dir / "phototest.tif")

    response, elapsed_s = timed_get(client, f"/v1/jobs/{job_id}?wait=0.6")

    assert response.status_code == 200
    assert response.json()["status"] == JobStatus.QUEUED
    assert response.headers["Retry-After"] == "2"
    assert elapsed_s >= 0.6


def test_finished_job_returns_at_once_without_retry_after(
    make_client: Callable[..., TestClient], api_database_url: str, corpus_dir: Path
) -> None:
    client = make_client()
    job_id = submit(client, corpus_dir / "phototest.tif")
    set_job(api_database_url, job_id, status=JobStatus.SUCCEEDED).join()

    response, elapsed_s = timed_get(client, f"/v1/jobs/{job_id}?wait=30")

    assert response.status_code == 200
    assert "Retry-After" not in response.headers
    assert elapsed_s < 2


def test_wait_over_60_seconds_is_rejected(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    job_id = submit(client, corpus_dir / "phototest.tif")

    assert client.get(f"/v1/jobs/{job_id}?wait=61").status_code == 422
    assert client.get(f"/v1/jobs/{job_id}?wait=-1").status_code == 422


def test_wait_on_another_tenants_job_is_404(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    job_id = submit(make_client(), corpus_dir / "phototest.tif")

    response, elapsed_s = timed_get(make_client(), f"/v1/jobs/{job_id}?wait=5")

    assert response.status_code == 404
    assert elapsed_s < 2

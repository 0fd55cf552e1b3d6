"""Pages on a real Celery worker: priority overtaking, tenant fair share, cancel, progress.

Each test starts tests/worker/slow_worker.py (an engine that sleeps on every page) against
PostgreSQL and Redis, with a database of its own so no other test's jobs are claimed.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from PIL import Image
from sqlalchemy import select, update

from core.db import Database, upgrade_database
from core.jobs import JobService
from core.scheduling import PAGE_LEASE_TTL_S
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.storage import open_storage
from core.tables import Job, Page, Tenant, WebhookDelivery, as_utc, utcnow
from tests.conftest import PostgresServer

pytestmark = pytest.mark.services

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER_STOP_TIMEOUT_S = 20
WAIT_TIMEOUT_S = 60.0
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()

WorkerStarter = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def settings(postgres_server: PostgresServer, redis_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings on a fresh database, an emptied Redis database and a local storage folder."""
    database_url = postgres_server.create_database()
    upgrade_database(database_url)
    redis.Redis.from_url(redis_url).flushdb()
    yield Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        broker_url=redis_url,
        storage_url=f"file://{tmp_path / 'storage'}",
        engine="rapidocr",
        webhook_secret=WEBHOOK_SECRET,
    )


@pytest.fixture
def service(settings: Settings) -> Iterator[JobService]:
    built = JobService(settings, Database(settings.resolved_database_url), open_storage(settings))
    yield built
    built.database.dispose()


@pytest.fixture
def start_worker(settings: Settings, tmp_path: Path) -> Iterator[WorkerStarter]:
    """Start slow workers; each is stopped (SIGTERM, then SIGKILL) after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(delay_s: float, concurrency: int = 1, **variables: str) -> subprocess.Popen[bytes]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
        env.update(
            {
                "OCRQ_DATA_DIR": str(settings.data_dir),
                "OCRQ_DATABASE_URL": str(settings.database_url),
                "OCRQ_BROKER_URL": str(settings.broker_url),
                "OCRQ_STORAGE_URL": str(settings.storage_url),
                "OCRQ_TEST_PAGE_DELAY_S": str(delay_s),
                "OCRQ_TEST_CONCURRENCY": str(concurrency),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(variables)
        log_file = (tmp_path / f"worker-{len(started)}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.worker.slow_worker"],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO_ROOT,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_document(path: Path, pages: int) -> Path:
    """Write a small TIFF with `pages` pages (a PNG when there is one page)."""
    images = [Image.new("RGB", (64, 48), (255, 255, 255 - index)) for index in range(pages)]
    if pages == 1:
        path = path.with_suffix(".png")
        images[0].save(path)
    else:
        path = path.with_suffix(".tiff")
        images[0].save(path, save_all=True, append_images=images[1:])
    return path


def add_tenant(service: JobService, name: str, max_pages_in_flight: int | None = None) -> str:
    tenant = Tenant(
        name=name, webhook_secret=WEBHOOK_SECRET, max_pages_in_flight=max_pages_in_flight
    )
    with service.database.session() as session:
        session.add(tenant)
        session.flush()
        return tenant.id


def wait_until(condition: Callable[[], bool], worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        assert worker.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def page_rows(service: JobService, job_id: str) -> list[Page]:
    with service.database.session() as session:
        statement = select(Page).where(Page.job_id == job_id).order_by(Page.page_index)
        return list(session.scalars(statement))


def test_high_priority_job_overtakes_low_backlog(
    service: JobService, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker(delay_s=0.3)
    document = write_document(tmp_path / "page", pages=1)
    low_ids = [service.create_job(document, priority="low").id for _ in range(20)]
    wait_until(lambda: service.get_job(low_ids[0]).status == JobStatus.SUCCEEDED, worker)

    high = service.create_job(document, priority="high")
    wait_until(lambda: JobStatus(service.get_job(high.id).status).is_final, worker)
    low_done = [service.get_job(job_id).status for job_id in low_ids].count(JobStatus.SUCCEEDED)

    print(f"low-priority jobs finished before the high one: {low_done} of {len(low_ids)}")
    assert service.get_job(high.id).status == JobStatus.SUCCEEDED
    # Those done when it arrived, plus the page running then and at most one more.
    assert low_done <= 5


def test_tenant_limit_lets_other_tenant_run(
    service: JobService, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    busy = add_tenant(service, "busy", max_pages_in_flight=1)
    other = add_tenant(service, "other")
    worker = start_worker(delay_s=0.3, concurrency=2)
    backlog = service.create_job(write_document(tmp_path / "big", pages=24), tenant_id=busy)
    progress: list[int] = []

    def backlog_started() -> bool:
        progress.append(service.get_job(backlog.id).pages_done)
        return progress[-1] >= 2

    wait_until(backlog_started, worker)
    submitted = time.monotonic()
    single = service.create_job(write_document(tmp_path / "one", pages=1), tenant_id=other)
    wait_until(lambda: JobStatus(service.get_job(single.id).status).is_final, worker)
    waited_s = time.monotonic() - submitted
    backlog_done = service.get_job(backlog.id).pages_done

    print(f"single page of tenant 'other' took {waited_s:.2f} s; backlog at {backlog_done}/24")
    assert service.get_job(single.id).status == JobStatus.SUCCEEDED
    assert waited_s < 3.0
    assert backlog_done <= 12
    # pages_done rises page by page; it never jumps back.
    assert progress == sorted(progress)
    assert len(set(progress)) >= 2
    # The busy tenant never ran two pages at once.
    ended = [row for row in page_rows(service, backlog.id) if row.status == PageStatus.SUCCEEDED]
    spans = sorted((as_utc(row.started_at), as_utc(row.finished_at)) for row in ended)
    assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))


def test_cancel_stops_a_running_job_between_pages(
    service: JobService, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    worker = start_worker(delay_s=0.4)
    # The SSRF guard refuses a loopback webhook_url at submission unless it is allowed.
    allowed = service.settings.model_copy(update={"url_allowlist": "127.0.0.1"})
    job = JobService(allowed, service.database, service.storage).create_job(
        write_document(tmp_path / "doc", pages=8), webhook_url="http://127.0.0.1:9/hook"
    )
    wait_until(lambda: service.get_job(job.id).pages_done >= 2, worker)

    canceled = service.cancel_or_delete(job.id)
    time.sleep(1.5)  # long enough for the running page and one more to end

    assert canceled is not None
    final = service.get_job(job.id)
    rows = page_rows(service, job.id)
    succeeded = [row for row in rows if row.status == PageStatus.SUCCEEDED]
    assert final.status == JobStatus.CANCELED
    assert len(succeeded) == canceled.pages_done == final.pages_done < 8
    assert PageStatus.PENDING not in {row.status for row in rows}
    finished_at = as_utc(final.finished_at)
    assert finished_at is not None
    assert all(as_utc(row.started_at) <= finished_at for row in rows if row.started_at)
    with service.database.session() as session:
        events = list(
            session.scalars(
                select(WebhookDelivery.event_type).where(WebhookDelivery.job_id == job.id)
            )
        )
    assert events == ["job.canceled"]
    print(f"canceled at {canceled.pages_done} of 8 pages")


def test_page_cut_off_by_sigkill_runs_again_after_sweep(
    service: JobService, start_worker: WorkerStarter, tmp_path: Path
) -> None:
    first = start_worker(delay_s=1.5)
    job = service.create_job(write_document(tmp_path / "doc", pages=3))

    def page_running() -> bool:
        return any(row.status == PageStatus.RUNNING for row in page_rows(service, job.id))

    wait_until(page_running, first)
    first.kill()
    first.wait()
    cut_off = next(row for row in page_rows(service, job.id) if row.status == PageStatus.RUNNING)
    # Ages the dead worker's heartbeats past the lease instead of waiting PAGE_LEASE_TTL_S.
    stale = utcnow() - timedelta(seconds=PAGE_LEASE_TTL_S + 1)
    with service.database.session() as session:
        session.execute(update(Page).where(Page.job_id == job.id).values(heartbeat_at=stale))
        session.execute(update(Job).where(Job.id == job.id).values(heartbeat_at=stale))

    second = start_worker(delay_s=0.1)
    service.sweep()
    wait_until(lambda: JobStatus(service.get_job(job.id).status).is_final, second)

    rows = page_rows(service, job.id)
    assert service.get_job(job.id).status == JobStatus.SUCCEEDED
    assert [row.status for row in rows] == [PageStatus.SUCCEEDED] * 3
    assert rows[cut_off.page_index].lease_token == cut_off.lease_token + 1

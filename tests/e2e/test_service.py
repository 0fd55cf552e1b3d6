"""The service end to end: `ocrq api` and `ocrq worker` processes, PostgreSQL, Redis and S3."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from PIL import Image
from sqlalchemy import select

from core.db import Database
from core.tables import Page, as_utc
from tests.e2e.conftest import Stack

pytestmark = pytest.mark.services

# Small documents for the default run: one single-page TIFF, a 3-page TIFF and a tiny PNG.
QUICK_DOCUMENTS = ("phototest.tif", "multipage.tiff", "p_trns_single.png")
# Ten corpus documents (16 pages). multipage.pdf, whose 9000x9000 px page alone takes most of a
# minute on two cores, is left to tests/worker/test_pipeline_rapidocr.py.
CORPUS_DOCUMENTS = (
    "phototest.tif",
    "eurotext.tif",
    "i_trns.png",
    "test-ocr.png",
    "Landscape_3.jpg",
    "cmyk.pdf",
    "test-ocr-mixed.pdf",
    "p_trns_single.png",
    "multipage.tiff",
    "2400dpi.pdf",
)
JOB_TIMEOUT_S = 600.0
# The crash test's task time limit. A running job whose heartbeat is older counts as abandoned,
# and the broker re-delivers an unacknowledged message three times this after its delivery.
CRASH_TASK_TIME_LIMIT_S = 4
VISIBILITY_TIMEOUT_S = 3 * CRASH_TASK_TIME_LIMIT_S


def submit_concurrently(stack: Stack, paths: list[Path]) -> list[str]:
    """Submit every file at once, one client per thread; return the job ids in input order."""

    def submit(path: Path) -> str:
        with stack.client() as client:
            return str(client.submit(path)["id"])

    with ThreadPoolExecutor(max_workers=len(paths)) as pool:
        return list(pool.map(submit, paths))


def page_rows(database_url: str, job_id: str) -> list[Page]:
    database = Database(database_url)
    with database.session() as session:
        statement = select(Page).where(Page.job_id == job_id).order_by(Page.page_index)
        rows = list(session.scalars(statement))
    database.dispose()
    return rows


def stored_object(stack: Stack, key: str) -> bytes:
    bucket, _, prefix = stack.storage_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=stack.s3_endpoint_url, region_name="us-east-1")
    body: bytes = s3.get_object(Bucket=bucket, Key=f"{prefix}/{key}")["Body"].read()
    return body


def check_finished_jobs(
    stack: Stack, paths: list[Path], job_ids: list[str], expected_markdown: list[str]
) -> None:
    """Each job succeeded, with one page row per page, result objects in S3 and the markdown."""
    with stack.client() as client:
        for path, job_id, expected in zip(paths, job_ids, expected_markdown, strict=True):
            job = client.wait(job_id, JOB_TIMEOUT_S, progress=False)
            assert job["status"] == "succeeded", (path.name, job)
            assert job["pages_done"] == job["pages_total"], path.name

            indices = [page.page_index for page in page_rows(stack.database_url, job_id)]
            assert indices == list(range(job["pages_total"])), path.name

            stored_markdown = stored_object(stack, f"results/{job_id}/result.md").decode()
            assert stored_object(stack, f"results/{job_id}/result.json").startswith(b"{")
            markdown = client.result_markdown(job_id)
            assert markdown == expected, path.name
            assert stored_markdown == expected, path.name


def test_service_runs_jobs_through_broker(
    stack: Stack, corpus_dir: Path, run_locally: Callable[[list[Path]], list[str]]
) -> None:
    """Documents submitted at once all succeed, with the markdown `ocrq run` gives."""
    paths = [corpus_dir / name for name in QUICK_DOCUMENTS]
    stack.start_api()
    stack.start_worker()

    job_ids = submit_concurrently(stack, paths)

    check_finished_jobs(stack, paths, job_ids, run_locally(paths))


def test_service_runs_corpus_concurrently(
    stack: Stack, corpus_dir: Path, run_locally: Callable[[list[Path]], list[str]]
) -> None:
    """Ten corpus documents submitted at once to two workers match `ocrq run`."""
    paths = [corpus_dir / name for name in CORPUS_DOCUMENTS]
    stack.start_api()
    stack.start_worker()
    stack.start_worker()

    job_ids = submit_concurrently(stack, paths)

    check_finished_jobs(stack, paths, job_ids, run_locally(paths))


def make_multipage_tiff(source: Path, destination: Path, pages: int) -> Path:
    """Write a TIFF whose every frame is the source page, so each page takes real OCR time."""
    with Image.open(source) as page:
        frame = page.convert("L")
    frame.save(destination, save_all=True, append_images=[frame] * (pages - 1))
    return destination


def test_worker_crash_resumes_job_without_duplicate_pages(
    stack: Stack, corpus_dir: Path, tmp_path: Path
) -> None:
    """A worker killed mid-job (SIGKILL to its group) leaves the job to the next worker.

    The pages written before the crash are kept, a page cut off is claimed again once its
    heartbeat is stale, and each page is written once.
    """
    stack.env["OCRQ_TASK_TIME_LIMIT_S"] = str(CRASH_TASK_TIME_LIMIT_S)
    stack.start_api()
    first_worker = stack.start_worker()
    client = stack.client()
    document = make_multipage_tiff(corpus_dir / "phototest.tif", tmp_path / "pages.tif", pages=6)
    job_id = client.submit(document)["id"]

    deadline = time.monotonic() + JOB_TIMEOUT_S
    job = client.get(job_id)
    while job["pages_done"] < 1:
        assert job["status"] in ("queued", "running"), job
        assert time.monotonic() < deadline, f"no page finished:\n{first_worker.output_tail()}"
        time.sleep(0.1)
        job = client.get(job_id)
    first_worker.kill_group(signal.SIGKILL)
    killed_at = datetime.now(UTC)

    job = client.get(job_id)
    pages_before_crash = job["pages_done"]
    assert job["status"] == "running", job
    assert pages_before_crash < job["pages_total"], "the job finished before the kill"

    # A worker that starts after the visibility timeout restores the unacknowledged message.
    time.sleep(VISIBILITY_TIMEOUT_S + 1)
    stack.start_worker()
    job = client.wait(job_id, JOB_TIMEOUT_S, progress=False)

    assert job["status"] == "succeeded", job
    assert job["pages_done"] == job["pages_total"]
    rows = page_rows(stack.database_url, job_id)
    assert [row.page_index for row in rows] == list(range(job["pages_total"]))
    # A page cut off by the kill is claimed once more; the kill may also fall between pages.
    assert all(row.lease_token in (1, 2) for row in rows)
    kept = [row for row in rows if (as_utc(row.finished_at) or killed_at) < killed_at]
    assert len(kept) >= pages_before_crash
    assert all(row.attempts == 1 for row in kept)
    client.close()

"""URL inputs: the SSRF guard at submit time, and the worker's fetch through a local server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job

pytestmark = pytest.mark.services


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder; yields (base URL, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", folder
    server.shutdown()
    server.server_close()


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = make_harness(make_settings(url_allowlist="127.0.0.1"), FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/doc.png", "http://169.254.169.254/latest/meta-data/"]
)
def test_submit_url_to_internal_address_is_refused(
    make_client: Callable[..., TestClient], broker_queue: Callable[[], list[str]], url: str
) -> None:
    response = make_client().post("/v1/jobs", json={"url": url})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "url_not_allowed"
    assert broker_queue() == []


def test_submit_url_named_in_allowlist_is_queued(
    make_client: Callable[..., TestClient], broker_queue: Callable[[], list[str]]
) -> None:
    client = make_client(url_allowlist="127.0.0.1")

    response = client.post("/v1/jobs", json={"url": "http://127.0.0.1:9/doc.png", "mode": "tiny"})

    assert response.status_code == 202
    assert response.json()["mode"] == "tiny"
    assert broker_queue() == [response.json()["id"]]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "ftp://127.0.0.1/doc.png"}, "invalid_url"),
        ({"url": "http://127.0.0.1/a", "password": "x"}, "unknown_field"),
        ({"url": "http://127.0.0.1/a", "colour": "red"}, "unknown_field"),
    ],
)
def test_submit_bad_url_body_is_refused(
    make_client: Callable[..., TestClient], body: dict[str, str], code: str
) -> None:
    response = make_client(url_allowlist="127.0.0.1").post("/v1/jobs", json=body)

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == code


def test_url_job_is_fetched_and_read_by_the_pipeline(
    harness: Harness, file_server: tuple[str, Path], make_page_image: Callable[..., Image.Image]
) -> None:
    base_url, folder = file_server
    make_page_image().save(folder / "page.png")
    job = harness.service.create_job(None, source={"type": "url", "url": f"{base_url}/page.png"})
    assert job.pages_total is None

    outcome = process_job(job.id, harness.context)

    finished = harness.service.get_job(job.id)
    assert outcome.status == JobStatus.SUCCEEDED
    assert (finished.media_type, finished.pages_total) == ("image/png", 1)
    assert harness.storage.exists(finished.input_key)


def test_url_job_non_document_fails(
    harness: Harness, file_server: tuple[str, Path]
) -> None:
    base_url, folder = file_server
    (folder / "notes.txt").write_text("not a document")
    job = harness.service.create_job(None, source={"type": "url", "url": f"{base_url}/notes.txt"})

    outcome = process_job(job.id, harness.context)

    finished = harness.service.get_job(job.id)
    assert outcome.status == JobStatus.FAILED
    assert finished.error_code == "unsupported_media_type"


def test_url_job_with_unreachable_server_is_retried(harness: Harness) -> None:
    """Port 9 (discard) has no listener on 127.0.0.1, so the connection is refused."""
    job = harness.service.create_job(
        None, source={"type": "url", "url": "http://127.0.0.1:9/page.png"}
    )

    outcome = process_job(job.id, harness.context)

    assert outcome.retry
    assert harness.service.get_job(job.id).status == JobStatus.QUEUED

"""Result file routes: pages, figures and result links, on PostgreSQL and moto S3."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from core.jobs import JobService
from tests.worker.fakes import FakeEngine
from worker.context import PipelineContext
from worker.pipeline import process_job

pytestmark = pytest.mark.services


def finished_job(client: TestClient, path: Path) -> dict[str, Any]:
    """Submit `path` and run it through the pipeline with a fake engine drawing figure 0_0."""
    with path.open("rb") as handle:
        job: dict[str, Any] = client.post("/v1/jobs", files={"file": (path.name, handle)}).json()
    service: JobService = client.app.state.job_service  # type: ignore[attr-defined]
    engine = FakeEngine()
    engine.figure_pages = {0}
    context = PipelineContext(service.settings, service.database, service.storage, lambda _: engine)
    process_job(job["id"], context)
    return job


def test_figure_route_serves_the_stored_jpeg(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    job = finished_job(client, corpus_dir / "phototest.tif")

    response = client.get(f"/v1/jobs/{job['id']}/figures/0_0.jpg")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.content.startswith(b"\xff\xd8")


@pytest.mark.parametrize("name", ["..%2Fresult.json", "..%2F..%2Finputs", "0_9.jpg", "x.jpg"])
def test_figure_route_404_for_bad_names(
    make_client: Callable[..., TestClient], corpus_dir: Path, name: str
) -> None:
    client = make_client()
    job = finished_job(client, corpus_dir / "phototest.tif")

    response = client.get(f"/v1/jobs/{job['id']}/figures/{name}")

    assert response.status_code == 404
    assert response.json()["detail"]["code"] in ("figure_not_found", "not_found")


def test_other_tenant_gets_404_for_figure_page_and_links(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    owner, other = make_client(), make_client()
    job = finished_job(owner, corpus_dir / "phototest.tif")

    for path in ("figures/0_0.jpg", "pages/0", "result?links=true"):
        response = other.get(f"/v1/jobs/{job['id']}/{path}")
        assert response.status_code == 404, path
        assert response.json()["detail"]["code"] == "job_not_found"


def test_page_route_returns_the_page_with_its_figures(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    job = finished_job(client, corpus_dir / "phototest.tif")

    page = client.get(f"/v1/jobs/{job['id']}/pages/0")
    missing = client.get(f"/v1/jobs/{job['id']}/pages/1")

    assert page.status_code == 200
    assert page.json()["markdown"] == "page 1"
    assert page.json()["figures"] == ["0_0.jpg"]
    assert missing.status_code == 404
    assert missing.json()["detail"]["code"] == "page_not_found"


def test_result_links_on_s3_download_every_file(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client(presign_expires_s=300)
    job = finished_job(client, corpus_dir / "phototest.tif")

    links = client.get(f"/v1/jobs/{job['id']}/result", params={"links": "true"}).json()

    assert links["expires_at"] is not None
    result = httpx.get(links["result_json"])
    assert result.status_code == 200
    assert result.json()["markdown"] == "page 1"
    assert httpx.get(links["result_md"]).content == b"page 1"
    assert httpx.get(links["pages"][0]["url"]).json()["index"] == 0
    figure = httpx.get(links["figures"][0]["url"])
    assert figure.content == client.get(f"/v1/jobs/{job['id']}/figures/0_0.jpg").content


def test_result_links_on_file_storage_are_api_routes(
    make_client: Callable[..., TestClient], corpus_dir: Path, tmp_path: Path
) -> None:
    client = make_client(storage_url=f"file://{tmp_path / 'store'}")
    job = finished_job(client, corpus_dir / "phototest.tif")

    links = client.get(f"/v1/jobs/{job['id']}/result?links=true").json()

    assert links["expires_at"] is None
    for url in [links["result_json"], links["pages"][0]["url"], links["figures"][0]["url"]]:
        assert client.get(url).status_code == 200


def test_running_batch_read_carries_retry_after(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    """A polled batch sends Retry-After, as a polled job does; the header is documented."""
    client = make_client()
    path = corpus_dir / "phototest.tif"
    with path.open("rb") as handle:
        batch = client.post("/v1/batches", files=[("file", (path.name, handle))]).json()

    running = client.get(f"/v1/batches/{batch['id']}")
    canceled = client.delete(f"/v1/batches/{batch['id']}")
    ended = client.get(f"/v1/batches/{batch['id']}")

    assert running.json()["status"] == "running"
    assert int(running.headers["Retry-After"]) > 0
    assert canceled.status_code == 200
    assert "Retry-After" not in ended.headers

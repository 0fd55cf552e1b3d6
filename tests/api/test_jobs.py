"""Routes under /v1/jobs against PostgreSQL, moto S3 and a Redis broker no worker consumes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select

from core.db import Database
from core.tables import Job

pytestmark = pytest.mark.services


def submit(client: TestClient, path: Path, **fields: str) -> Response:
    with path.open("rb") as handle:
        return client.post("/v1/jobs", files={"file": (path.name, handle)}, data=fields)


def stored_keys(storage_url: str, endpoint_url: str) -> list[str]:
    """List every object key under the storage URL's bucket prefix."""
    bucket, _, prefix = storage_url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/")
    return [item["Key"] for item in listing.get("Contents", [])]


def count_jobs(database_url: str) -> int:
    database = Database(database_url)
    with database.session() as session:
        count = session.scalar(select(func.count()).select_from(Job)) or 0
    database.dispose()
    return count


@pytest.fixture
def assert_nothing_kept(
    api_database_url: str,
    s3_storage_url: str,
    s3_endpoint_url: str,
    broker_queue: Callable[[], list[str]],
) -> Callable[[int], None]:
    """Return a check that no job row, stored object or broker message was added."""

    def check(jobs_before: int) -> None:
        assert count_jobs(api_database_url) == jobs_before
        assert stored_keys(s3_storage_url, s3_endpoint_url) == []
        assert broker_queue() == []

    return check


def test_create_job_returns_202_with_location(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    s3_storage_url: str,
    s3_endpoint_url: str,
    broker_queue: Callable[[], list[str]],
) -> None:
    client = make_client()

    response = submit(client, corpus_dir / "phototest.tif", mode="base", task="ocr")

    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["pages_total"] == 1
    assert (job["mode"], job["task"]) == ("base", "ocr")
    assert client.get(response.headers["location"]).json()["id"] == job["id"]
    assert stored_keys(s3_storage_url, s3_endpoint_url) == [
        f"{s3_storage_url.split('/', 3)[3]}/inputs/{job['id']}/original"
    ]
    assert broker_queue() == [job["id"]]


def test_create_job_counts_pages_of_multipage_pdf(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    response = submit(make_client(), corpus_dir / "multipage.pdf")

    assert response.status_code == 202, response.text
    assert response.json()["pages_total"] > 1


def test_create_job_rejects_file_over_size_limit(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    api_database_url: str,
    assert_nothing_kept: Callable[[int], None],
) -> None:
    jobs_before = count_jobs(api_database_url)
    client = make_client(max_file_bytes=4096)

    response = submit(client, corpus_dir / "eurotext.tif")

    assert response.status_code == 413
    detail = response.json()["detail"]
    assert detail["code"] == "file_too_large"
    assert "OCRQ_MAX_FILE_BYTES" in detail["message"]
    assert "4096" in detail["message"]
    assert_nothing_kept(jobs_before)


def test_create_job_rejects_declared_length_over_limit(
    make_client: Callable[..., TestClient], api_database_url: str
) -> None:
    """A Content-Length far over the limit is rejected before the body is read."""
    jobs_before = count_jobs(api_database_url)
    client = make_client(max_file_bytes=1024)
    body = b"x" * (3 * 1024 * 1024)

    response = client.post("/v1/jobs", files={"file": ("big.pdf", body)})

    assert response.status_code == 413
    assert response.json()["detail"]["code"] == "file_too_large"
    assert count_jobs(api_database_url) == jobs_before


def test_create_job_rejects_text_renamed_pdf(
    make_client: Callable[..., TestClient],
    tmp_path: Path,
    api_database_url: str,
    assert_nothing_kept: Callable[[int], None],
) -> None:
    jobs_before = count_jobs(api_database_url)
    fake_pdf = tmp_path / "report.pdf"
    fake_pdf.write_text("This is plain text, not a PDF.\n")

    response = submit(make_client(), fake_pdf)

    assert response.status_code == 415
    assert response.json()["detail"]["code"] == "unsupported_media_type"
    assert_nothing_kept(jobs_before)


@pytest.mark.parametrize(
    ("name", "code"),
    [("invalid.pdf", "unreadable_document"), ("skew-encrypted.pdf", "pdf_password_required")],
)
def test_create_job_rejects_unreadable_pdf(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    api_database_url: str,
    assert_nothing_kept: Callable[[int], None],
    name: str,
    code: str,
) -> None:
    jobs_before = count_jobs(api_database_url)

    response = submit(make_client(), corpus_dir / name)

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == code
    assert_nothing_kept(jobs_before)


def test_create_job_rejects_pages_over_limit(
    make_client: Callable[..., TestClient], corpus_dir: Path, api_database_url: str
) -> None:
    jobs_before = count_jobs(api_database_url)

    response = submit(make_client(max_pages=1), corpus_dir / "multipage.pdf")

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "too_many_pages"
    assert "OCRQ_MAX_PAGES" in response.json()["detail"]["message"]
    assert count_jobs(api_database_url) == jobs_before


@pytest.mark.parametrize(
    ("fields", "code", "named"),
    [
        ({"mode": "huge"}, "invalid_mode", "gundam"),
        ({"task": "translate"}, "invalid_task", "markdown"),
        ({"task": "locate"}, "missing_target", "target"),
        ({"metadata": "[1, 2]"}, "invalid_metadata", "JSON object"),
        ({"metadata": "{not json"}, "invalid_metadata", "JSON object"),
        ({"webhook_url": "ftp://example.com/hook"}, "invalid_webhook_url", "http"),
        ({"webhook_url": "https://example.com/a hook"}, "invalid_webhook_url", "http"),
        ({"colour": "blue"}, "unknown_field", "colour"),
    ],
)
def test_create_job_rejects_invalid_option(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    assert_nothing_kept: Callable[[int], None],
    api_database_url: str,
    fields: dict[str, str],
    code: str,
    named: str,
) -> None:
    jobs_before = count_jobs(api_database_url)

    response = submit(make_client(), corpus_dir / "phototest.tif", **fields)

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == code
    assert named in response.json()["detail"]["message"]
    assert_nothing_kept(jobs_before)


def test_create_job_requires_file_part(make_client: Callable[..., TestClient]) -> None:
    response = make_client().post("/v1/jobs", files={"document": ("a.png", b"x")})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "missing_file"


def test_create_job_rejects_non_multipart_body(make_client: Callable[..., TestClient]) -> None:
    response = make_client().post(
        "/v1/jobs", content=b"abc", headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert response.json()["detail"]["code"] == "unsupported_request_type"


def test_create_job_rejects_json_body_with_file_field(
    make_client: Callable[..., TestClient],
) -> None:
    """A JSON body names a document by url or s3; it cannot carry the file itself."""
    response = make_client().post("/v1/jobs", json={"file": "abc"})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "unknown_field"


def test_create_job_replays_idempotency_key(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    broker_queue: Callable[[], list[str]],
) -> None:
    client = make_client()
    key = {"Idempotency-Key": f"test-{uuid.uuid4()}"}
    path = corpus_dir / "test-ocr.png"

    with path.open("rb") as handle:
        first = client.post("/v1/jobs", files={"file": (path.name, handle)}, headers=key)
    with path.open("rb") as handle:
        second = client.post("/v1/jobs", files={"file": (path.name, handle)}, headers=key)

    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert broker_queue() == [first.json()["id"]]


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "1' OR '1'='1"])
@pytest.mark.parametrize("suffix", ["", "/result", "/result.md"])
def test_read_unknown_job_returns_404(
    make_client: Callable[..., TestClient], job_id: str, suffix: str
) -> None:
    response = make_client().get(f"/v1/jobs/{job_id}{suffix}")

    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "job_not_found"


def test_delete_unknown_job_returns_404(make_client: Callable[..., TestClient]) -> None:
    response = make_client().delete(f"/v1/jobs/{uuid.uuid4()}")

    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "job_not_found"


@pytest.mark.parametrize("suffix", ["/result", "/result.md"])
def test_result_of_queued_job_returns_409(
    make_client: Callable[..., TestClient], corpus_dir: Path, suffix: str
) -> None:
    client = make_client()
    job = submit(client, corpus_dir / "phototest.tif").json()

    response = client.get(f"/v1/jobs/{job['id']}{suffix}")

    assert response.status_code == 409
    assert response.json()["detail"]["code"] == "job_not_finished"
    assert "queued" in response.json()["detail"]["message"]


def test_delete_cancels_queued_job_then_deletes_it(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    s3_storage_url: str,
    s3_endpoint_url: str,
) -> None:
    client = make_client()
    job = submit(client, corpus_dir / "phototest.tif").json()

    canceled = client.delete(f"/v1/jobs/{job['id']}")
    assert canceled.status_code == 200
    assert canceled.json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "canceled"
    assert client.get(f"/v1/jobs/{job['id']}/result").status_code == 200

    deleted = client.delete(f"/v1/jobs/{job['id']}")
    assert deleted.status_code == 204
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert stored_keys(s3_storage_url, s3_endpoint_url) == []


def test_result_of_finished_job_joins_pages(
    make_client: Callable[..., TestClient], corpus_dir: Path, api_database_url: str
) -> None:
    """Page rows written by a worker come back in page order, in JSON and as markdown."""
    from core.tables import Page

    client = make_client()
    job = submit(client, corpus_dir / "multipage.pdf").json()
    database = Database(api_database_url)
    with database.session() as session:
        row = session.get(Job, job["id"])
        assert row is not None
        row.status = "succeeded"
        row.pages_done = row.pages_total or 0
        for index in reversed(range(row.pages_done)):
            result: dict[str, Any] = {"blocks": [], "finish_reason": "eos", "timings_ms": {}}
            session.add(
                Page(
                    job_id=row.id,
                    page_index=index,
                    status="succeeded",
                    attempts=1,
                    width=100,
                    height=200,
                    markdown=f"page {index + 1} text",
                    result=result,
                )
            )
    database.dispose()

    result_json = client.get(f"/v1/jobs/{job['id']}/result").json()
    markdown = client.get(f"/v1/jobs/{job['id']}/result.md")

    assert [page["index"] for page in result_json["pages"]] == list(range(job["pages_total"]))
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert markdown.text == result_json["markdown"]
    assert markdown.text.index("page 1 text") < markdown.text.index("page 2 text")

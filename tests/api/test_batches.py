"""Routes under /v1/batches against PostgreSQL, moto S3 and a Redis broker no worker consumes."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from core.db import Database
from core.tables import Job, WebhookDelivery
from tests.api.test_jobs import stored_keys

pytestmark = pytest.mark.services


def png(make_page_image: Callable[..., Image.Image], word: str = "batch") -> bytes:
    buffer = io.BytesIO()
    make_page_image(lines=(word,), size_px=(200, 60), font_size=24).save(buffer, format="PNG")
    return buffer.getvalue()


def post_files(
    client: TestClient, documents: list[bytes], headers: dict[str, str] | None = None, **fields: str
) -> Any:
    files = [("file", (f"doc{index}.png", data)) for index, data in enumerate(documents)]
    return client.post("/v1/batches", files=files, data=fields, headers=headers or {})


def set_status(database_url: str, job_id: str, status: str) -> None:
    database = Database(database_url)
    with database.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
    database.dispose()


def test_create_batch_queues_one_job_per_file(
    make_client: Callable[..., TestClient],
    broker_queue: Callable[[], list[str]],
    make_page_image: Callable[..., Image.Image],
) -> None:
    client = make_client()

    response = post_files(client, [png(make_page_image)] * 3, mode="tiny", priority="high")

    body = response.json()
    assert response.status_code == 202
    assert response.headers["location"] == f"/v1/batches/{body['id']}"
    assert body["status"] == "running"
    assert body["jobs_total"] == 3
    assert body["counts"]["queued"] == 3
    assert {job["mode"] for job in body["jobs"]} == {"tiny"}
    assert sorted(broker_queue()) == sorted(job["id"] for job in body["jobs"])


def test_create_batch_with_one_bad_document_stores_nothing(
    make_client: Callable[..., TestClient],
    broker_queue: Callable[[], list[str]],
    make_page_image: Callable[..., Image.Image],
    s3_storage_url: str,
    s3_endpoint_url: str,
) -> None:
    client = make_client()
    good = png(make_page_image)

    response = post_files(client, [good, good, b"plain text, not a document"])

    detail = response.json()["detail"]
    assert response.status_code == 422
    assert detail["code"] == "unsupported_media_type"
    assert "Document 2" in detail["message"]
    assert stored_keys(s3_storage_url, s3_endpoint_url) == []
    assert broker_queue() == []


def test_create_batch_over_max_batch_jobs_is_refused(
    make_client: Callable[..., TestClient], make_page_image: Callable[..., Image.Image]
) -> None:
    client = make_client(max_batch_jobs=2)

    response = post_files(client, [png(make_page_image)] * 3)

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "batch_size_invalid"


def test_create_batch_from_json_sources_checks_each_url(
    make_client: Callable[..., TestClient], broker_queue: Callable[[], list[str]]
) -> None:
    client = make_client(url_allowlist="127.0.0.1")
    sources = [{"url": "http://127.0.0.1:9/a.png"}, {"url": "http://169.254.169.254/"}]

    refused = client.post("/v1/batches", json={"sources": sources})
    accepted = client.post("/v1/batches", json={"sources": sources[:1], "options": {"task": "ocr"}})

    assert refused.status_code == 422
    assert refused.json()["detail"]["code"] == "url_not_allowed"
    assert "Document 1" in refused.json()["detail"]["message"]
    assert accepted.status_code == 202
    assert accepted.json()["jobs"][0]["task"] == "ocr"
    assert broker_queue() == [accepted.json()["jobs"][0]["id"]]


def test_batch_jobs_page_through_cursor_in_submission_order(
    make_client: Callable[..., TestClient], make_page_image: Callable[..., Image.Image]
) -> None:
    client = make_client()
    created = post_files(client, [png(make_page_image)] * 5).json()
    batch_id = created["id"]

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        body = client.get(f"/v1/batches/{batch_id}", params=params).json()
        seen += [job["id"] for job in body["jobs"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break

    full = client.get(f"/v1/batches/{batch_id}", params={"limit": 10}).json()
    assert pages == 3
    assert seen == [job["id"] for job in full["jobs"]]
    assert len(set(seen)) == 5


def test_batch_counts_follow_job_states(
    make_client: Callable[..., TestClient],
    make_page_image: Callable[..., Image.Image],
    api_database_url: str,
) -> None:
    client = make_client()
    created = post_files(client, [png(make_page_image)] * 3).json()
    jobs = created["jobs"]
    set_status(api_database_url, jobs[0]["id"], "succeeded")
    set_status(api_database_url, jobs[1]["id"], "running")

    counts = client.get(f"/v1/batches/{created['id']}").json()["counts"]

    assert counts == {
        "queued": 1,
        "running": 1,
        "succeeded": 1,
        "partial": 0,
        "failed": 0,
        "canceled": 0,
    }


def test_other_tenant_gets_404_for_batch(
    make_client: Callable[..., TestClient], make_page_image: Callable[..., Image.Image]
) -> None:
    owner, stranger = make_client(), make_client()
    batch_id = post_files(owner, [png(make_page_image)]).json()["id"]

    assert stranger.get(f"/v1/batches/{batch_id}").status_code == 404
    assert stranger.delete(f"/v1/batches/{batch_id}").status_code == 404
    assert owner.get(f"/v1/batches/{batch_id}").status_code == 200


def test_cancel_batch_cancels_unfinished_jobs_and_records_event(
    make_client: Callable[..., TestClient],
    make_page_image: Callable[..., Image.Image],
    api_database_url: str,
) -> None:
    client = make_client(url_allowlist="127.0.0.1")
    created = post_files(client, [png(make_page_image)] * 3, webhook_url="http://127.0.0.1:9/h")
    jobs = created.json()["jobs"]
    set_status(api_database_url, jobs[0]["id"], "succeeded")

    response = client.delete(f"/v1/batches/{created.json()['id']}")

    body = response.json()
    assert response.status_code == 200
    assert body["status"] == "canceled"
    assert body["counts"]["canceled"] == 2
    assert body["counts"]["succeeded"] == 1
    database = Database(api_database_url)
    with database.session() as session:
        events = [
            row.event_type
            for row in session.query(WebhookDelivery).filter_by(batch_id=body["id"]).all()
        ]
    database.dispose()
    assert "batch.completed" in events


def test_create_batch_replays_idempotency_key(
    make_client: Callable[..., TestClient],
    broker_queue: Callable[[], list[str]],
    make_page_image: Callable[..., Image.Image],
) -> None:
    client = make_client()
    documents = [png(make_page_image, "one"), png(make_page_image, "two")]
    headers = {"Idempotency-Key": "batch-key-1"}

    first = post_files(client, documents, headers)
    replay = post_files(client, documents, headers)
    conflict = post_files(client, documents[:1], headers)

    assert (first.status_code, replay.status_code) == (202, 200)
    assert replay.json()["id"] == first.json()["id"]
    assert conflict.status_code == 409
    assert len(broker_queue()) == 2

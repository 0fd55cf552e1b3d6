"""Idempotency-Key on POST /v1/jobs: replays, conflicts, races, expiry and tenant scope."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import func, select, update

import core.idempotency_store
from core.db import Database
from core.idempotency_store import IdempotentRequest
from core.tables import IdempotencyRecord, Job, utcnow
from tests.api.test_jobs import stored_keys

pytestmark = pytest.mark.services

# Seconds the racing requests wait for each other before the test gives up.
RACE_TIMEOUT_S = 20


def post_job(client: TestClient, path: Path, key: str, **fields: str) -> Response:
    with path.open("rb") as handle:
        return client.post(
            "/v1/jobs",
            files={"file": (path.name, handle)},
            data=fields,
            headers={"Idempotency-Key": key},
        )


def jobs_with_key(database_url: str, key: str) -> list[str]:
    database = Database(database_url)
    with database.session() as session:
        ids = list(session.scalars(select(Job.id).where(Job.idempotency_key == key)))
    database.dispose()
    return ids


def input_objects(storage_url: str, endpoint_url: str) -> list[str]:
    return [key for key in stored_keys(storage_url, endpoint_url) if "/inputs/" in key]


def new_key() -> str:
    return f"test-{uuid.uuid4()}"


def test_replay_returns_original_job_once(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    api_database_url: str,
    s3_storage_url: str,
    s3_endpoint_url: str,
    broker_queue: Callable[[], list[str]],
) -> None:
    """A replayed POST gets 200 and the same job: one row, one stored input, one enqueue."""
    client = make_client()
    key = new_key()
    path = corpus_dir / "phototest.tif"

    first = post_job(client, path, key, mode="base")
    second = post_job(client, path, key, mode="base")

    assert first.status_code == 202, first.text
    assert second.status_code == 200, second.text
    job_id = first.json()["id"]
    assert second.json()["id"] == job_id
    assert second.headers["location"] == f"/v1/jobs/{job_id}"
    assert jobs_with_key(api_database_url, key) == [job_id]
    assert len(input_objects(s3_storage_url, s3_endpoint_url)) == 1
    assert broker_queue() == [job_id]


@pytest.mark.parametrize(
    ("second_file", "second_fields"),
    [("phototest.tif", {"mode": "tiny"}), ("test-ocr.png", {"mode": "base"})],
    ids=["different-option", "different-file"],
)
def test_conflicting_replay_returns_409(
    make_client: Callable[..., TestClient],
    corpus_dir: Path,
    api_database_url: str,
    s3_storage_url: str,
    s3_endpoint_url: str,
    broker_queue: Callable[[], list[str]],
    second_file: str,
    second_fields: dict[str, str],
) -> None:
    client = make_client()
    key = new_key()
    first = post_job(client, corpus_dir / "phototest.tif", key, mode="base")

    second = post_job(client, corpus_dir / second_file, key, **second_fields)

    assert first.status_code == 202, first.text
    assert second.status_code == 409, second.text
    detail = second.json()["detail"]
    assert detail["code"] == "idempotency_key_reused"
    assert key in detail["message"]
    assert "different request" in detail["message"]
    assert jobs_with_key(api_database_url, key) == [first.json()["id"]]
    assert len(input_objects(s3_storage_url, s3_endpoint_url)) == 1
    assert broker_queue() == [first.json()["id"]]


def test_same_key_in_two_tenants_creates_two_jobs(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    key = new_key()
    path = corpus_dir / "phototest.tif"

    tenant_a = post_job(make_client(), path, key)
    tenant_b = post_job(make_client(), path, key)

    assert tenant_a.status_code == 202
    assert tenant_b.status_code == 202
    assert tenant_a.json()["id"] != tenant_b.json()["id"]


def test_concurrent_identical_posts_create_one_job(
    make_client: Callable[..., TestClient],
    make_api_key: Callable[..., str],
    corpus_dir: Path,
    api_database_url: str,
    s3_storage_url: str,
    s3_endpoint_url: str,
    broker_queue: Callable[[], list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both requests pass the lookup before either commits; the primary key lets one win."""
    api_key = make_api_key()
    clients = [make_client(api_key=api_key), make_client(api_key=api_key)]
    key = new_key()
    path = corpus_dir / "phototest.tif"

    # Hold each request after its first lookup until both have looked the key up.
    both_looked_up = threading.Barrier(2, timeout=RACE_TIMEOUT_S)
    waited = threading.local()
    real_find_original = core.idempotency_store.find_original

    def find_original_then_wait(database: Database, request: IdempotentRequest) -> str | None:
        found = real_find_original(database, request)
        if not getattr(waited, "done", False):
            waited.done = True
            both_looked_up.wait()
        return found

    monkeypatch.setattr(core.idempotency_store, "find_original", find_original_then_wait)
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda client: post_job(client, path, key), clients))

    assert sorted(response.status_code for response in responses) == [200, 202]
    job_ids = {response.json()["id"] for response in responses}
    assert len(job_ids) == 1
    assert jobs_with_key(api_database_url, key) == list(job_ids)
    assert len(input_objects(s3_storage_url, s3_endpoint_url)) == 1
    assert broker_queue() == list(job_ids)


def test_expired_key_allows_new_job(
    make_client: Callable[..., TestClient], corpus_dir: Path, api_database_url: str
) -> None:
    """After OCRQ_IDEMPOTENCY_TTL_S the key is free again, even for a different request."""
    client = make_client()
    key = new_key()
    first = post_job(client, corpus_dir / "phototest.tif", key, mode="base")
    database = Database(api_database_url)
    with database.session() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == key)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )

    second = post_job(client, corpus_dir / "phototest.tif", key, mode="tiny")
    with database.session() as session:
        records = session.scalar(
            select(func.count()).select_from(IdempotencyRecord).where(IdempotencyRecord.key == key)
        )
    database.dispose()

    assert first.status_code == 202
    assert second.status_code == 202, second.text
    assert second.json()["id"] != first.json()["id"]
    assert records == 1


def test_idempotency_ttl_setting_sets_expiry(
    make_client: Callable[..., TestClient], corpus_dir: Path, api_database_url: str
) -> None:
    client = make_client(idempotency_ttl_s=120)
    key = new_key()

    before = utcnow()
    response = post_job(client, corpus_dir / "phototest.tif", key)
    database = Database(api_database_url)
    with database.session() as session:
        record = session.scalars(
            select(IdempotencyRecord).where(IdempotencyRecord.key == key)
        ).one()
    database.dispose()

    assert response.status_code == 202
    assert record.resource_type == "job"
    assert record.resource_id == response.json()["id"]
    assert before + timedelta(seconds=119) <= record.expires_at
    assert record.expires_at <= utcnow() + timedelta(seconds=120)


def test_replay_after_the_job_was_deleted_creates_a_new_job(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    key = new_key()
    first = post_job(client, corpus_dir / "phototest.tif", key, mode="base")
    job_id = first.json()["id"]
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200  # canceled while queued
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204  # then deleted

    second = post_job(client, corpus_dir / "phototest.tif", key, mode="base")
    third = post_job(client, corpus_dir / "phototest.tif", key, mode="base")

    assert second.status_code == 202, second.text
    assert second.json()["id"] != job_id
    assert third.status_code == 200, third.text
    assert third.json()["id"] == second.json()["id"]

"""Fixtures of the route tests: an app on a migrated PostgreSQL database, moto S3 and Redis.

Jobs are enqueued to a real Redis database that no worker consumes, so they stay queued and the
tests can read the broker queue to check what was (or was not) sent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.celery_app import QUEUE_OCR
from core.db import upgrade_database
from core.jobs import JobService
from core.settings import Settings
from tests.conftest import PostgresServer


@pytest.fixture(scope="session")
def api_database_url(postgres_server: PostgresServer) -> str:
    """A database of the route tests' own, migrated to the newest revision."""
    url = postgres_server.create_database()
    upgrade_database(url)
    return url


@pytest.fixture
def api_settings(
    make_settings: Callable[..., Settings],
    api_database_url: str,
    s3_storage_url: str,
    s3_endpoint_url: str,
    redis_url: str,
) -> Callable[..., Settings]:
    """Factory of Settings on the test services; keyword arguments override."""

    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": api_database_url,
            "storage_url": s3_storage_url,
            "s3_endpoint_url": s3_endpoint_url,
            "broker_url": redis_url,
        }
        values.update(overrides)
        return make_settings(**values)

    return build


@pytest.fixture
def broker_queue(redis_url: str) -> Iterator[Callable[[], list[str]]]:
    """Return a function listing the job ids waiting in the broker's ocr queue."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE_OCR)

    def job_ids() -> list[str]:
        ids = []
        for raw in client.lrange(QUEUE_OCR, 0, -1):
            # A Celery message body (protocol 2) is base64 JSON: [args, kwargs, embed].
            body = json.loads(base64.b64decode(json.loads(raw)["body"]))
            ids.append(body[0][0])
        return ids

    yield job_ids
    client.delete(QUEUE_OCR)
    client.close()


@pytest.fixture
def make_client(api_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Factory of TestClients, each on a new app built from api_settings(**overrides)."""
    clients: list[TestClient] = []

    def build(*, raise_server_exceptions: bool = True, **overrides: Any) -> TestClient:
        settings = api_settings(**overrides)
        app = create_app(settings, job_service=JobService.open(settings))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()

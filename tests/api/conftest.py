"""Fixtures of the route tests: an app on a migrated PostgreSQL database, moto S3 and Redis.

Jobs are enqueued to a real Redis database that no worker consumes, so they stay queued and the
tests can read the broker queue to check what was (or was not) sent. Clients from make_client
authenticate as a tenant of their own unless a test passes api_key.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.celery_app import QUEUE_OCR
from core.db import Database, upgrade_database
from core.jobs import JobService
from core.settings import Settings
from core.tenants import create_api_key
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
    """Return a function listing the job ids waiting in the broker's ocr queue, any priority."""
    import base64
    import json

    import redis

    client = redis.Redis.from_url(redis_url)
    # Kombu's Redis transport keeps one list per priority step: the queue name for step 0, and
    # the name, "\x06\x16" and the step for the others (3, 6, 9).
    lists = [QUEUE_OCR] + [f"{QUEUE_OCR}\x06\x16{step}" for step in (3, 6, 9)]
    client.delete(*lists)

    def job_ids() -> list[str]:
        ids = []
        for name in lists:
            for raw in client.lrange(name, 0, -1):
                # A Celery message body (protocol 2) is base64 JSON: [args, kwargs, embed].
                body = json.loads(base64.b64decode(json.loads(raw)["body"]))
                ids.append(body[0][0])
        return ids

    yield job_ids
    client.delete(*lists)
    client.close()


# make_client's default for api_key: a new tenant with a new key.
NEW_TENANT = "new-tenant"


@pytest.fixture
def make_api_key(api_database_url: str) -> Iterator[Callable[..., str]]:
    """Factory of API keys in the route tests' database; a call without a name makes a tenant."""
    database = Database(api_database_url)

    def build(tenant: str | None = None) -> str:
        name = tenant or f"tenant-{uuid.uuid4().hex[:12]}"
        return create_api_key(database, name).plaintext

    yield build
    database.dispose()


@pytest.fixture
def make_client(
    api_settings: Callable[..., Settings], make_api_key: Callable[..., str]
) -> Iterator[Callable[..., TestClient]]:
    """Factory of TestClients, each on a new app built from api_settings(**overrides).

    Each client sends `Authorization: Bearer` with a key of a new tenant. Pass api_key to send
    another key, or None to send none.
    """
    clients: list[TestClient] = []

    def build(
        *,
        raise_server_exceptions: bool = True,
        api_key: str | None = NEW_TENANT,
        **overrides: Any,
    ) -> TestClient:
        settings = api_settings(**overrides)
        app = create_app(settings, job_service=JobService.open(settings))
        if api_key == NEW_TENANT:
            api_key = make_api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions, headers=headers)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()

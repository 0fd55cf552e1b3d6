"""GET /v1/webhooks/secret and POST /v1/webhooks/secret/rotate: the webhook_url signing secret."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from core.db import Database
from core.tenants import find_tenant

pytestmark = pytest.mark.services


def stored_secret(database_url: str, tenant: str) -> str:
    database = Database(database_url)
    row = find_tenant(database, tenant)
    database.dispose()
    assert row is not None
    return row.webhook_secret


def test_secret_signs_webhook_url_deliveries(
    make_client: Callable[..., TestClient],
    make_api_key: Callable[..., str],
    api_database_url: str,
) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:12]}"
    client = make_client(api_key=make_api_key(tenant))

    response = client.get("/v1/webhooks/secret")

    assert response.status_code == 200, response.text
    assert response.json()["secret"] == stored_secret(api_database_url, tenant)
    assert response.json()["secret"].startswith("whsec_")
    assert make_client().get("/v1/webhooks/secret").json()["secret"] != response.json()["secret"]


def test_rotate_replaces_the_secret(
    make_client: Callable[..., TestClient],
    make_api_key: Callable[..., str],
    api_database_url: str,
) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:12]}"
    client = make_client(api_key=make_api_key(tenant))
    before = client.get("/v1/webhooks/secret").json()["secret"]

    rotated = client.post("/v1/webhooks/secret/rotate")

    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret != before
    assert client.get("/v1/webhooks/secret").json()["secret"] == new_secret
    assert stored_secret(api_database_url, tenant) == new_secret


def test_secret_without_a_tenant_is_403_naming_the_service_secret(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(auth_required=False, api_key=None)

    response = client.get("/v1/webhooks/secret")

    assert response.status_code == 403, response.text
    assert response.json()["detail"]["code"] == "tenant_required"
    assert "OCRQ_WEBHOOK_SECRET" in response.json()["detail"]["message"]


def test_secret_needs_an_api_key(make_client: Callable[..., TestClient]) -> None:
    assert make_client(api_key=None).get("/v1/webhooks/secret").status_code == 401

"""Bearer-key authentication of /v1 routes and tenant isolation of jobs."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from httpx import Response
from structlog.testing import capture_logs

from core.db import Database
from core.tables import Job
from core.tenants import create_api_key, revoke_api_key
from tests.api.test_jobs import submit

pytestmark = pytest.mark.services

JOB_ROUTES = ("", "/result", "/result.md")


def assert_unauthorized(response: Response, challenge_error: str | None) -> None:
    """The response is a 401 with the error body and an RFC 6750 Bearer challenge."""
    assert response.status_code == 401, response.text
    assert response.json()["detail"]["code"] == "unauthorized"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if challenge_error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{challenge_error}"' in challenge


def test_missing_key_returns_401(make_client: Callable[..., TestClient], corpus_dir: Path) -> None:
    client = make_client(api_key=None)

    read = client.get(f"/v1/jobs/{uuid.uuid4()}")
    created = submit(client, corpus_dir / "phototest.tif")

    assert_unauthorized(read, challenge_error=None)
    assert_unauthorized(created, challenge_error=None)
    assert "Authorization: Bearer" in read.json()["detail"]["message"]


@pytest.mark.parametrize(
    "header",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer two tokens", "ocrq_" + "A" * 43],
)
def test_malformed_authorization_returns_401(
    make_client: Callable[..., TestClient], header: str
) -> None:
    client = make_client(api_key=None)

    response = client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": header})

    assert_unauthorized(response, challenge_error=None)


def test_unknown_key_returns_401(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key="ocrq_" + "A" * 43)

    response = client.get(f"/v1/jobs/{uuid.uuid4()}")

    assert_unauthorized(response, challenge_error="invalid_token")


def test_revoked_key_returns_401(
    make_client: Callable[..., TestClient], api_database_url: str
) -> None:
    database = Database(api_database_url)
    created = create_api_key(database, f"tenant-{uuid.uuid4().hex[:12]}")
    client = make_client(api_key=created.plaintext)
    before = client.get(f"/v1/jobs/{uuid.uuid4()}")

    revoke_api_key(database, created.key_id)
    after = client.get(f"/v1/jobs/{uuid.uuid4()}")
    database.dispose()

    assert before.status_code == 404
    assert_unauthorized(after, challenge_error="invalid_token")


def test_health_routes_need_no_key(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_key=None)

    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_auth_not_required_accepts_requests_without_key(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client(api_key=None, auth_required=False)

    created = submit(client, corpus_dir / "phototest.tif")

    assert created.status_code == 202, created.text
    assert client.get(f"/v1/jobs/{created.json()['id']}").status_code == 200


def test_every_v1_operation_requires_auth(make_client: Callable[..., TestClient]) -> None:
    """Each /v1 operation depends on current_tenant (its bearer scheme shows in the OpenAPI
    document), so a new route cannot skip authentication."""
    document = make_client(api_key=None).get("/openapi.json").json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, methods in document["paths"].items()
        if path.startswith("/v1/")
        for method, operation in methods.items()
    }

    unguarded = [
        name
        for name, operation in operations.items()
        if operation.get("security") != [{"ApiKey": []}] or "401" not in operation["responses"]
    ]

    assert operations
    assert unguarded == []


def test_openapi_declares_bearer_scheme(make_client: Callable[..., TestClient]) -> None:
    document = make_client(api_key=None).get("/openapi.json").json()

    schemes = document["components"]["securitySchemes"]
    job_get = document["paths"]["/v1/jobs/{job_id}"]["get"]

    assert schemes["ApiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["ApiKey"]["description"],
    }
    assert job_get["security"] == [{"ApiKey": []}]
    assert "401" in job_get["responses"]


def test_key_never_logged(
    make_client: Callable[..., TestClient], make_api_key: Callable[..., str]
) -> None:
    key = make_api_key()
    wrong_key = key[:-1] + ("B" if key[-1] != "B" else "C")
    client = make_client(api_key=key)

    with capture_logs() as logs:
        client.get(f"/v1/jobs/{uuid.uuid4()}")
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {wrong_key}"})

    text = repr(logs)
    assert [entry["event"] for entry in logs].count("request.unauthorized") == 1
    assert key not in text
    assert wrong_key not in text


def test_other_tenants_job_is_404_like_unknown_id(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    """Tenant B's responses for A's job equal those for the same id once it no longer exists."""
    tenant_a = make_client()
    tenant_b = make_client()
    job_id = submit(tenant_a, corpus_dir / "phototest.tif").json()["id"]

    seen_by_b = {suffix: tenant_b.get(f"/v1/jobs/{job_id}{suffix}") for suffix in JOB_ROUTES}
    delete_by_b = tenant_b.delete(f"/v1/jobs/{job_id}")
    seen_by_a = tenant_a.get(f"/v1/jobs/{job_id}")
    assert tenant_a.delete(f"/v1/jobs/{job_id}").status_code == 200  # canceled
    assert tenant_a.delete(f"/v1/jobs/{job_id}").status_code == 204  # deleted
    gone = {suffix: tenant_b.get(f"/v1/jobs/{job_id}{suffix}") for suffix in JOB_ROUTES}
    delete_gone = tenant_b.delete(f"/v1/jobs/{job_id}")

    assert seen_by_a.json()["status"] == "queued"
    for suffix in JOB_ROUTES:
        assert seen_by_b[suffix].status_code == 404, suffix
        assert seen_by_b[suffix].json() == gone[suffix].json(), suffix
    assert delete_by_b.status_code == 404
    assert delete_by_b.json() == delete_gone.json()


def test_job_created_with_key_belongs_to_its_tenant(
    make_client: Callable[..., TestClient], api_database_url: str, corpus_dir: Path
) -> None:
    database = Database(api_database_url)
    created = create_api_key(database, f"tenant-{uuid.uuid4().hex[:12]}")
    client = make_client(api_key=created.plaintext)

    job_id = submit(client, corpus_dir / "phototest.tif").json()["id"]

    with database.session() as session:
        job = session.get(Job, job_id)
    database.dispose()
    assert job is not None
    assert job.tenant_id == created.tenant_id

"""`ocrq keys create|list|revoke` as subprocesses against a migrated PostgreSQL database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from core.apikeys import is_well_formed, key_id_of
from core.db import Database, upgrade_database
from core.settings import Settings
from core.tenants import authenticate, find_tenant
from tests.conftest import PostgresServer

pytestmark = pytest.mark.services

OCRQ = Path(sys.executable).with_name("ocrq")


@pytest.fixture(scope="module")
def keys_database_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    upgrade_database(url)
    return url


def run_keys(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env["OCRQ_DATABASE_URL"] = database_url
    env["OCRQ_DATA_DIR"] = str(tmp_path / "data")
    return subprocess.run(
        [str(OCRQ), "keys", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_keys_create_prints_only_a_working_key(keys_database_url: str, tmp_path: Path) -> None:
    """stdout is the key alone, and the key authenticates against the API."""
    tenant = f"cli-{uuid.uuid4().hex[:8]}"

    completed = run_keys(keys_database_url, tmp_path, "create", "--tenant", tenant, "--name", "ci")

    assert completed.returncode == 0, completed.stderr
    key = completed.stdout.strip()
    assert completed.stdout == key + "\n"
    assert is_well_formed(key)
    assert key_id_of(key) in completed.stderr
    assert key not in completed.stderr

    settings = Settings(data_dir=tmp_path / "data", database_url=keys_database_url)
    with TestClient(create_app(settings)) as client:
        with_key = client.get(
            f"/v1/jobs/{uuid.uuid4()}", headers={"Authorization": f"Bearer {key}"}
        )
        without_key = client.get(f"/v1/jobs/{uuid.uuid4()}")
    assert with_key.status_code == 404
    assert without_key.status_code == 401


def test_keys_list_shows_key_id_not_key(keys_database_url: str, tmp_path: Path) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    key = run_keys(keys_database_url, tmp_path, "create", "--tenant", tenant).stdout.strip()

    listed = run_keys(keys_database_url, tmp_path, "list", "--tenant", tenant)

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t")[0] == "KEY_ID"
    assert len(lines) == 2
    assert lines[1].split("\t")[0] == key_id_of(key)
    assert key not in listed.stdout


def test_keys_revoke_stops_authentication(keys_database_url: str, tmp_path: Path) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    key = run_keys(keys_database_url, tmp_path, "create", "--tenant", tenant).stdout.strip()
    database = Database(keys_database_url)
    before = authenticate(database, key)

    revoked = run_keys(keys_database_url, tmp_path, "revoke", key_id_of(key))
    after = authenticate(database, key)
    database.dispose()

    assert revoked.returncode == 0, revoked.stderr
    assert before is not None
    assert after is None


def test_keys_revoke_unknown_key_fails(keys_database_url: str, tmp_path: Path) -> None:
    completed = run_keys(keys_database_url, tmp_path, "revoke", "ocrq_nothere1")

    assert completed.returncode == 1
    assert "not found" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_keys_create_rejects_invalid_tenant_name(keys_database_url: str, tmp_path: Path) -> None:
    completed = run_keys(keys_database_url, tmp_path, "create", "--tenant", "has space")

    assert completed.returncode == 1
    assert completed.stdout == ""
    assert "invalid_tenant_name" in completed.stderr


def test_tenants_secret_prints_the_webhook_url_signing_secret(
    keys_database_url: str, tmp_path: Path
) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = run_keys(keys_database_url, tmp_path, "create", "--tenant", tenant)
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env.update(OCRQ_DATABASE_URL=keys_database_url, OCRQ_DATA_DIR=str(tmp_path / "data"))

    def secret_of(name: str) -> subprocess.CompletedProcess[str]:
        command = [str(OCRQ), "tenants", "secret", "--tenant", name]
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)

    shown = secret_of(tenant)
    missing = secret_of(f"absent-{uuid.uuid4().hex[:8]}")

    assert created.returncode == 0, created.stderr
    assert shown.returncode == 0, shown.stderr
    database = Database(keys_database_url)
    tenant_row = find_tenant(database, tenant)
    database.dispose()
    assert tenant_row is not None
    assert shown.stdout == tenant_row.webhook_secret + "\n"
    assert missing.returncode != 0
    assert "was not found" in missing.stderr

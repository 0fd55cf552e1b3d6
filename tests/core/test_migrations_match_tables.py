"""Alembic migrations build exactly the schema that core.tables declares, on both databases."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.db import downgrade_database, upgrade_database
from core.tables import Base

ISSUE_4_TABLES = {
    "tenants",
    "api_keys",
    "batches",
    "idempotency_keys",
    "webhook_endpoints",
    "webhook_deliveries",
    "webhook_attempts",
}


def schema_differences(url: str) -> list[Any]:
    """Return autogenerate's list of differences between the migrated database and the models."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    return list(differences)


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_sqlite_migrations_match_tables(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ocrq.db'}"
    upgrade_database(url)

    differences = schema_differences(url)

    assert differences == [], f"migrations and core.tables disagree: {differences}"


def test_postgres_migrations_match_tables(postgres_server: Any) -> None:
    url = postgres_server.create_database()
    upgrade_database(url)

    differences = schema_differences(url)

    assert differences == [], f"migrations and core.tables disagree: {differences}"


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_downgrade_to_0001_drops_tenant_tables(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ocrq.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    upgrade_database(url)
    assert table_names(url) >= ISSUE_4_TABLES

    downgrade_database(url, "0001")

    remaining = table_names(url)
    assert not ISSUE_4_TABLES & remaining
    assert {"jobs", "pages"} <= remaining
    upgrade_database(url)
    assert table_names(url) >= ISSUE_4_TABLES

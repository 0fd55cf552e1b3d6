"""The migrations create exactly the tables of core.tables, on SQLite and PostgreSQL, and revert."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from core.db import Database, downgrade_database, upgrade_database
from core.tables import Base


@pytest.fixture(scope="module")
def migration_postgres_url(request: pytest.FixtureRequest) -> str:
    """One PostgreSQL database for this module; dropping a database costs over a second."""
    server = request.getfixturevalue("postgres_server")
    url: str = server.create_database()
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def make_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Factory of URLs of empty databases of either backend.

    The PostgreSQL database is shared by the module and emptied by a downgrade to base first.
    """
    if request.param == "sqlite":
        return lambda: f"sqlite:///{tmp_path / 'ocrq.db'}"
    url = request.getfixturevalue("migration_postgres_url")

    def empty_postgres_url() -> str:
        downgrade_database(url, "base")
        assert table_names(url) <= {"alembic_version"}
        return str(url)

    return empty_postgres_url


def table_names(url: str) -> set[str]:
    database = Database(url)
    try:
        return set(inspect(database.engine).get_table_names())
    finally:
        database.dispose()


def test_upgrade_creates_jobs_and_pages(make_database_url: Callable[[], str]) -> None:
    url = make_database_url()

    upgrade_database(url)

    assert {"jobs", "pages"} <= table_names(url)


def test_upgrade_matches_table_definitions(make_database_url: Callable[[], str]) -> None:
    """Autogenerate finds no difference between the migrated schema and core.tables."""
    url = make_database_url()
    upgrade_database(url)

    database = Database(url)
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    database.dispose()

    assert differences == []


def test_downgrade_to_base_drops_tables(make_database_url: Callable[[], str]) -> None:
    url = make_database_url()
    upgrade_database(url)

    downgrade_database(url, "base")

    assert table_names(url) & {"jobs", "pages"} == set()


def test_upgrade_twice_is_a_no_op(make_database_url: Callable[[], str]) -> None:
    url = make_database_url()

    upgrade_database(url)
    upgrade_database(url)

    assert {"jobs", "pages"} <= table_names(url)

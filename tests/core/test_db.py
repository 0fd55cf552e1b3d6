"""core.db: SQLite pragmas, session commit and rollback, ping."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from core.db import Database, upgrade_database
from core.errors import TransientError
from core.tables import Job, Page


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nested' / 'ocrq.db'}"


def make_job(**overrides: object) -> Job:
    values: dict[str, object] = {
        "status": "queued",
        "engine": "rapidocr",
        "mode": "gundam",
        "task": "markdown",
        "media_type": "image/png",
        "input_key": "inputs/x/original",
        "size_bytes": 1,
    }
    values.update(overrides)
    return Job(**values)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path: Path) -> None:
    database = Database(sqlite_url(tmp_path))

    with database.engine.connect() as connection:
        journal_mode = connection.execute(text("PRAGMA journal_mode")).scalar()
        foreign_keys = connection.execute(text("PRAGMA foreign_keys")).scalar()
    database.dispose()

    assert journal_mode == "wal"
    assert foreign_keys == 1


def test_sqlite_cascades_page_delete_with_job(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade_database(url)
    database = Database(url)
    with database.session() as session:
        job = make_job()
        session.add(job)
        session.flush()
        session.add(Page(job_id=job.id, page_index=0, status="succeeded", attempts=1))
    with database.session() as session:
        session.execute(text("DELETE FROM jobs"))

    with database.session() as session:
        remaining = session.execute(text("SELECT count(*) FROM pages")).scalar()
    database.dispose()

    assert remaining == 0


def test_session_rolls_back_on_error(tmp_path: Path) -> None:
    url = sqlite_url(tmp_path)
    upgrade_database(url)
    database = Database(url)

    with pytest.raises(RuntimeError), database.session() as session:
        session.add(make_job())
        session.flush()
        raise RuntimeError("boom")
    with database.session() as session:
        count = session.execute(text("SELECT count(*) FROM jobs")).scalar()
    database.dispose()

    assert count == 0


def test_ping_raises_transient_error_when_unreachable() -> None:
    database = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=1")

    with pytest.raises(TransientError, match="unreachable"):
        database.ping()


def test_safe_url_hides_password() -> None:
    database = Database("postgresql+psycopg://user:secret@127.0.0.1:5432/ocrq")

    assert "secret" not in database.safe_url

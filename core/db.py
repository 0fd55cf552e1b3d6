"""Database access: the SQLAlchemy engine and sessions, and Alembic upgrades run from code.

Tables exist only through the migrations in the `migrations` package; nothing here calls
`create_all`. SQLite (the embedded default) runs in WAL mode with foreign keys enforced, so that
`ocrq run` and an embedded API see the same behaviour as PostgreSQL for cascades.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from core.errors import TransientError

SQLITE_BUSY_TIMEOUT_MS = 30_000


class Database:
    """An engine and its session factory for one database URL; one per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_database_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """Yield a session that commits when the block succeeds and rolls back when it raises."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def ping(self) -> None:
        """Run a trivial query; raise TransientError when the database cannot be reached."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            message = f"the database at {self.safe_url} is unreachable: {type(exc).__name__}"
            raise TransientError(message) from exc

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    def dispose(self) -> None:
        self.engine.dispose()


def create_database_engine(url: str) -> Engine:
    """Create an engine for `url`; SQLite files get their folder, WAL mode and foreign keys."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _configure_sqlite_connection)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def alembic_config(url: str) -> Config:
    """Return an Alembic Config for the migrations shipped in the `migrations` package."""
    script_location = resources.files("migrations")
    config = Config(str(script_location / "alembic.ini"))
    config.set_main_option("script_location", str(script_location))
    # ConfigParser treats % as interpolation; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_database(url: str, revision: str = "head") -> None:
    """Apply migrations up to `revision` (default: the newest)."""
    command.upgrade(alembic_config(url), revision)


def downgrade_database(url: str, revision: str) -> None:
    """Revert migrations down to `revision` ("base" removes every table)."""
    command.downgrade(alembic_config(url), revision)

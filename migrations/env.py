"""Alembic environment: migrations run online against the URL that core.db put in the config.

The target metadata is core.tables, so `alembic revision --autogenerate` compares against it.
SQLite runs in batch mode because it cannot ALTER most column properties in place.
"""

from __future__ import annotations

from alembic import context

from core.db import create_database_engine
from core.tables import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        message = "no database URL; run migrations with `ocrq migrate` or upgrade_database()"
        raise RuntimeError(message)

    engine = create_database_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run them against a database")
run_migrations_online()

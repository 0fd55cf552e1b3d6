"""`ocrq keys create|list|revoke`: manage tenants' API keys directly in OCRQ_DATABASE_URL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from core.db import Database


@contextmanager
def _open_database() -> Iterator[Database]:
    """Open the configured database; the embedded SQLite file is migrated first, as `ocrq api` does.

    A database error becomes one line on stderr that points at `ocrq migrate`.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from core.db import Database, upgrade_database
    from core.logging import configure_logging
    from core.settings import get_settings

    settings = get_settings()
    # Logs go to stderr, so stdout carries only the command's output (the key, for create).
    configure_logging(settings.log_level)
    url = settings.resolved_database_url
    if not settings.database_url:
        upgrade_database(url)
    database = Database(url)
    try:
        if not _has_tables(database):
            message = (
                f"the database at {database.safe_url} has no ocrq tables; run `ocrq migrate` first"
            )
            raise click.ClickException(message)
        yield database
    except SQLAlchemyError as exc:
        message = (
            f"the database at {database.safe_url} failed: {type(exc).__name__}; "
            "check OCRQ_DATABASE_URL and run `ocrq migrate`"
        )
        raise click.ClickException(message) from exc
    finally:
        database.dispose()


def _has_tables(database: Database) -> bool:
    """Return whether the tables that the key commands use exist (`ocrq migrate` made them)."""
    from sqlalchemy import inspect

    with database.session() as session:
        inspector = inspect(session.connection())
        return all(inspector.has_table(name) for name in ("tenants", "api_keys"))


def _format_time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment is not None else "-"


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (stored hashed in OCRQ_DATABASE_URL)."""


@keys.command("create")
@click.option("--tenant", "tenant_name", required=True, help="Tenant name; created if missing.")
@click.option("--name", "key_name", default=None, help="A label for the key, shown by `list`.")
def create(tenant_name: str, key_name: str | None) -> None:
    """Create an API key and print it once on stdout; it cannot be shown again."""
    from core.tenants import create_api_key

    with _open_database() as database:
        created = create_api_key(database, tenant_name, key_name)
    click.echo(created.plaintext)
    click.echo(
        f"created key {created.key_id} for tenant {created.tenant_name}; "
        "store it now, it is not shown again",
        err=True,
    )


@keys.command("list")
@click.option("--tenant", "tenant_name", required=True, help="Tenant name.")
def list_keys(tenant_name: str) -> None:
    """Print the tenant's keys: key id, name, created, last used, revoked (never the key)."""
    from core.tenants import list_api_keys

    with _open_database() as database:
        infos = list_api_keys(database, tenant_name)
    click.echo("KEY_ID\tNAME\tCREATED\tLAST_USED\tREVOKED")
    for info in infos:
        fields = (
            info.key_id,
            info.name or "-",
            _format_time(info.created_at),
            _format_time(info.last_used_at),
            _format_time(info.revoked_at),
        )
        click.echo("\t".join(fields))


@keys.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke the key KEY_ID (as `list` shows it); requests with it then get 401."""
    from core.tenants import revoke_api_key

    with _open_database() as database:
        revoked = revoke_api_key(database, key_id)
    state = "revoked" if revoked else "was already revoked"
    click.echo(f"key {key_id} {state}", err=True)

"""`ocrq api`, `ocrq worker`, `ocrq migrate`."""

import click


@click.command()
def api() -> None:
    """Serve the HTTP API (not built yet)."""
    raise click.ClickException("not built yet")


@click.command()
def worker() -> None:
    """Start a Celery worker (not built yet)."""
    raise click.ClickException("not built yet")


@click.command()
def migrate() -> None:
    """Apply database migrations (not built yet)."""
    raise click.ClickException("not built yet")

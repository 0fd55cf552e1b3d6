"""Client commands against OCRQ_API_URL: submit, status, result."""

import click


@click.command()
def submit() -> None:
    """Submit a document (not built yet)."""
    raise click.ClickException("not built yet")


@click.command()
def status() -> None:
    """Show a job's status (not built yet)."""
    raise click.ClickException("not built yet")


@click.command()
def result() -> None:
    """Print a job's result (not built yet)."""
    raise click.ClickException("not built yet")

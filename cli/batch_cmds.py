"""Batch commands against the API at OCRQ_API_URL: `ocrq batch submit` and `ocrq batch status`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cli.client_cmds import _api_client, _print_json


@click.group()
def batch() -> None:
    """Submit many documents as one batch and follow it."""


@batch.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--mode", default=None, help="Resolution mode: tiny, small, base, large or gundam.")
@click.option("--task", default=None, help="Task: markdown, ocr, free, figure, describe or locate.")
@click.option(
    "--priority", type=click.Choice(["high", "normal", "low"]), default=None, help="Queue."
)
@click.option("--webhook-url", default=None, help="URL that gets batch.completed.")
@click.option("--wait", is_flag=True, help="Wait until every job has ended, with a progress bar.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=3600.0,
    show_default=True,
    help="With --wait, seconds to wait before giving up.",
)
def submit(
    files: tuple[Path, ...],
    mode: str | None,
    task: str | None,
    priority: str | None,
    webhook_url: str | None,
    wait: bool,
    timeout_s: float,
) -> None:
    """Submit FILE... as one batch; print the batch as JSON (after --wait, once it has ended)."""
    with _api_client() as client:
        created = client.create_batch(
            list(files), mode=mode, task=task, priority=priority, webhook_url=webhook_url
        )
        if not wait:
            _print_json(created)
            return
        ended = client.wait_batch(created["id"], timeout_s, progress=sys.stderr.isatty())
        _print_json(ended)
        if ended["counts"].get("failed") or ended["status"] == "canceled":
            sys.exit(1)


@batch.command()
@click.argument("batch_id", metavar="ID")
@click.option("--limit", type=int, default=None, help="Jobs per page (default 100).")
@click.option("--cursor", default=None, help="next_cursor of the previous page.")
def status(batch_id: str, limit: int | None, cursor: str | None) -> None:
    """Print the batch ID as JSON: status, counts per job state and a page of its jobs."""
    with _api_client() as client:
        _print_json(client.get_batch(batch_id, limit=limit, cursor=cursor))

"""Client commands against the API at OCRQ_API_URL: `ocrq submit`, `ocrq status`, `ocrq result`."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from client import ClientError, OcrqClient
from core.settings import get_settings

# Statuses after which a submitted job has a result to print.
_RESULT_STATUSES = frozenset({"succeeded", "partial"})


@contextmanager
def _api_client() -> Iterator[OcrqClient]:
    """Open a client on OCRQ_API_URL; a ClientError becomes one line on stderr and exit 1."""
    settings = get_settings()
    api_key = settings.api_key.get_secret_value() if settings.api_key else None
    try:
        with OcrqClient(settings.api_url, api_key=api_key) as client:
            yield client
    except ClientError as exc:
        raise click.ClickException(f"{exc.message} (code {exc.code})") from exc


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--mode", default=None, help="Resolution mode: tiny, small, base, large or gundam.")
@click.option("--task", default=None, help="Task: markdown, ocr, free, figure, describe or locate.")
@click.option("--target", default=None, help="The phrase to find when --task is locate.")
@click.option(
    "--password",
    default=None,
    help="Password of an encrypted PDF; the API decrypts it at intake and never stores it.",
)
@click.option("--wait", is_flag=True, help="Wait for the job to finish and print its markdown.")
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="With --wait, seconds to wait before giving up.",
)
def submit(
    file: Path,
    mode: str | None,
    task: str | None,
    target: str | None,
    password: str | None,
    wait: bool,
    timeout_s: float,
) -> None:
    """Submit FILE as a job; print the job as JSON, or with --wait its markdown."""
    with _api_client() as client:
        job = client.submit(file, mode=mode, task=task, target=target, password=password)
        if not wait:
            _print_json(job)
            return

        job = client.wait(job["id"], timeout_s, progress=sys.stderr.isatty())
        if job["status"] not in _RESULT_STATUSES:
            error = job.get("error") or {}
            reason = error.get("message") or "no reason recorded"
            message = f"job {job['id']} ended {job['status']}: {reason}"
            raise click.ClickException(message)
        click.echo(client.result_markdown(job["id"]), nl=False)


@click.command()
@click.argument("job_id", metavar="JOB")
def status(job_id: str) -> None:
    """Print the job JOB as JSON: status, page counts, error."""
    with _api_client() as client:
        _print_json(client.get(job_id))


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["markdown", "json"]),
    default="markdown",
    show_default=True,
    help="markdown: the document text; json: per-page results with blocks and timings.",
)
def result(job_id: str, output_format: str) -> None:
    """Print the result of the finished job JOB."""
    with _api_client() as client:
        if output_format == "json":
            _print_json(client.result(job_id))
        else:
            click.echo(client.result_markdown(job_id), nl=False)

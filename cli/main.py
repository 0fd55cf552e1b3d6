"""The `ocrq` command line: one group, subcommands defined in sibling modules.

Subcommand modules keep heavy imports (torch, the engines, FastAPI) inside their functions so
that `ocrq --help` and the client commands start quickly.
"""

from __future__ import annotations

import sys

import click

from cli import batch_cmds, bench, client_cmds, keys, model, run, service, tenants
from core.errors import OcrError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ocrq")
def cli() -> None:
    """ocrq: asynchronous OCR jobs built around DeepSeek-OCR."""


cli.add_command(run.run)
cli.add_command(service.api)
cli.add_command(service.worker)
cli.add_command(service.migrate)
cli.add_command(client_cmds.submit)
cli.add_command(client_cmds.status)
cli.add_command(client_cmds.result)
cli.add_command(model.model)
cli.add_command(bench.bench)
cli.add_command(keys.keys)
cli.add_command(tenants.tenants)
cli.add_command(batch_cmds.batch)


def main() -> None:
    """Run the CLI; an OcrError becomes one clear line on stderr and exit status 1."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except OcrError as exc:
        click.echo(f"error: {exc.message} (code {exc.code})", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)

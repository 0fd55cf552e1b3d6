"""`ocrq run`: the main job in one process (owned by the pipeline work)."""

import click


@click.command()
def run() -> None:
    """Run OCR on files in this process (not built yet)."""
    raise click.ClickException("ocrq run is not built yet")

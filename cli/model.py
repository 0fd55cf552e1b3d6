"""`ocrq model describe|tokens`: inspect the DeepSeek-OCR architecture."""

import click


@click.group()
def model() -> None:
    """Inspect the DeepSeek-OCR network."""

"""`ocrq model describe|tokens`: inspect the DeepSeek-OCR architecture."""

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from models.deepseek_ocr.config import OcrConfig


@click.group()
def model() -> None:
    """Inspect the DeepSeek-OCR network."""


def load_ocr_config(config_name: str) -> "OcrConfig":
    """Return the OcrConfig named by --config: "full", "tiny", or a config.json or its folder."""
    import json
    from pathlib import Path

    from models.deepseek_ocr.config import OcrConfig
    from models.deepseek_ocr.weights import CONFIG_FILE, config_from_checkpoint_json

    if config_name == "full":
        return OcrConfig()
    if config_name == "tiny":
        return OcrConfig.tiny()

    path = Path(config_name)
    if path.is_dir():
        path = path / CONFIG_FILE
    if not path.is_file():
        message = f"expected full, tiny or a config.json path, but {config_name} was not found"
        raise click.BadParameter(message, param_hint="--config")
    return config_from_checkpoint_json(json.loads(path.read_text()))


@model.command()
@click.option(
    "--config",
    "config_name",
    default="full",
    show_default=True,
    help="Architecture: full, tiny, or a path to a checkpoint's config.json or its folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def describe(config_name: str, as_json: bool) -> None:
    """List the checkpoint tensors (official names, shapes, dtypes) and the parameter count.

    The network is built on the meta device, so no memory is spent on weights.
    """
    import json

    from models.deepseek_ocr.weights import describe_checkpoint

    description = describe_checkpoint(load_ocr_config(config_name))
    if as_json:
        click.echo(json.dumps(description))
        return

    tensors = description["tensors"]
    name_width = max(len(name) for name, _, _ in tensors)
    for name, shape, dtype in tensors:
        click.echo(f"{name:<{name_width}}  {str(shape):<20}  {dtype}")
    click.echo(f"parameters: {description['parameters']:,}  tensors: {len(tensors):,}")

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


@model.command()
@click.option(
    "--mode",
    default="gundam",
    show_default=True,
    help="Resolution mode: tiny, small, base, large or gundam.",
)
@click.option("--size", "size_text", required=True, help="Page size in pixels, as WIDTHxHEIGHT.")
@click.option(
    "--max-tiles",
    default=6,
    show_default=True,
    help="Max tiles per page in gundam mode (2 to 9).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def tokens(mode: str, size_text: str, max_tiles: int, as_json: bool) -> None:
    """Print how many <image> slots a page of this size takes, and its tile grid."""
    import json

    from models.deepseek_ocr.preprocess import count_image_tokens, mode_spec

    width, height = parse_page_size(size_text)
    try:
        spec = mode_spec(mode)
        count, tile_grid = count_image_tokens(width, height, mode, max_tiles)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc

    # Slots per part: each grid row ends with a newline vector, and one separator ends the image.
    global_slots = spec.global_grid_side * (spec.global_grid_side + 1)
    separator_slots = 1
    tile_slots = count - global_slots - separator_slots
    tile_count = 0 if tile_grid is None else tile_grid[0] * tile_grid[1]
    summary = {
        "mode": mode,
        "width": width,
        "height": height,
        "max_tiles": max_tiles,
        "image_tokens": count,
        "tile_grid": None if tile_grid is None else list(tile_grid),
        "tiles": tile_count,
        "global_slots": global_slots,
        "tile_slots": tile_slots,
        "separator_slots": separator_slots,
    }
    if as_json:
        click.echo(json.dumps(summary))
        return

    grid_text = "none"
    view_text = f"global view {spec.base_size} px"
    if tile_grid is not None:
        grid_text = f"{tile_grid[0]}x{tile_grid[1]} ({tile_count} tiles of {spec.image_size} px)"
    click.echo(f"<image> slots: {count}")
    click.echo(f"tile grid: {grid_text}")
    click.echo(
        f"parts: global {global_slots}, tiles {tile_slots}, separator {separator_slots} "
        f"(mode {mode}, {view_text})"
    )


def parse_page_size(size_text: str) -> tuple[int, int]:
    """Parse WIDTHxHEIGHT into positive pixel counts, or raise a one-line ClickException."""
    width_text, separator, height_text = size_text.lower().partition("x")
    if separator and width_text.isdigit() and height_text.isdigit():
        width, height = int(width_text), int(height_text)
        if width >= 1 and height >= 1:
            return width, height
    message = f"invalid --size {size_text!r}: expected WIDTHxHEIGHT in pixels, e.g. 2480x3508"
    raise click.ClickException(message)

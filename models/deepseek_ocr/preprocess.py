"""Page image to pixel tensors: one global view, plus 640-pixel tiles in Gundam mode.

Dimension legend: B batch, T tokens, D hidden, H heads, E experts, K top_k; S view side in
pixels, n tiles, q grid side in vision tokens.

Every step uses PIL, as the released DeepSeek-OCR code does, so the pixels match it:
- Tiny and Small resize the page straight to a square (aspect ratio not kept).
- Base, Large and the Gundam global view fit the page inside a square of side base_size
  (bicubic, small pages are upscaled) and pad it, centred, with grey (127, 127, 127).
- Gundam cuts tiles only when the page is wider or taller than one tile: it resizes the whole
  page to a grid of tiles chosen by aspect ratio and cuts them in row-major order.
- Pixels map to [-1, 1] with mean 0.5 and std 0.5 per channel.

The caller passes an RGB image with EXIF orientation already applied. Grounding boxes are
later scaled to its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

PAD_COLOR_RGB = (127, 127, 127)  # int(0.5 * 255), the normalisation mean
PIXELS_PER_VISION_TOKEN = 64  # 16-pixel SAM patches, then two stride-2 convolutions
MIN_TILES = 2  # a 1x1 grid is never a candidate
DEFAULT_MAX_TILES = 6
MAX_TILES_LIMIT = 9


@dataclass(frozen=True)
class ModeSpec:
    """One resolution mode: global view side, tile side and whether tiles are cut."""

    base_size: int
    image_size: int
    crop: bool

    @property
    def global_grid_side(self) -> int:
        """Vision tokens per row of the global view."""
        return math.ceil(self.base_size / PIXELS_PER_VISION_TOKEN)

    @property
    def tile_grid_side(self) -> int:
        """Vision tokens per row of one tile."""
        return math.ceil(self.image_size / PIXELS_PER_VISION_TOKEN)


MODES: dict[str, ModeSpec] = {
    "tiny": ModeSpec(base_size=512, image_size=512, crop=False),
    "small": ModeSpec(base_size=640, image_size=640, crop=False),
    "base": ModeSpec(base_size=1024, image_size=1024, crop=False),
    "large": ModeSpec(base_size=1280, image_size=1280, crop=False),
    "gundam": ModeSpec(base_size=1024, image_size=640, crop=True),
}


@dataclass(frozen=True)
class PreparedPage:
    """The model inputs for one page and the counts the prompt needs."""

    global_view: torch.Tensor  # [3, S, S] float32 in [-1, 1], S = base_size
    tiles: torch.Tensor | None  # [n, 3, t, t] float32, t = image_size; None without tiles
    tile_grid: tuple[int, int] | None  # (tiles_wide, tiles_high); None without tiles
    num_image_tokens: int  # <image> slots in the prompt, newlines and separator included
    spec: ModeSpec
    width: int  # page size in pixels, as given
    height: int


def mode_spec(name: str) -> ModeSpec:
    """Return the spec of a mode, raising ValueError that lists the valid names."""
    spec = MODES.get(name)
    if spec is None:
        message = f"invalid mode {name!r}: expected one of {', '.join(MODES)}"
        raise ValueError(message)
    return spec


def tile_grid_candidates(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """List every (tiles_wide, tiles_high) grid with min_tiles..max_tiles tiles, fewest first.

    Within one tile count the order is CPython's iteration order of a set of int tuples, as in
    the released DeepSeek-OCR code, because it decides between grids whose aspect ratios are
    equally close.
    """
    grids = {
        (wide, high)
        for wide in range(1, max_tiles + 1)
        for high in range(1, max_tiles + 1)
        if min_tiles <= wide * high <= max_tiles
    }
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


def choose_tile_grid(
    width: int,
    height: int,
    min_tiles: int = MIN_TILES,
    max_tiles: int = DEFAULT_MAX_TILES,
    tile_size: int = 640,
) -> tuple[int, int]:
    """Return the (tiles_wide, tiles_high) grid whose aspect ratio is closest to the page's.

    On an exact tie the later (larger) grid wins only if the page has more pixels than half of
    the pixels that grid covers, so large pages get more tiles.
    """
    _check_size(width, height)
    _check_max_tiles(max_tiles)
    if not 1 <= min_tiles <= max_tiles:
        message = f"invalid min_tiles {min_tiles}: expected 1 to max_tiles ({max_tiles})"
        raise ValueError(message)

    aspect_ratio = width / height
    area_px = width * height
    best_grid = (1, 1)
    best_difference = float("inf")
    for grid in tile_grid_candidates(min_tiles, max_tiles):
        difference = abs(aspect_ratio - grid[0] / grid[1])
        if difference < best_difference:
            best_grid, best_difference = grid, difference
        elif difference == best_difference and area_px > 0.5 * tile_size**2 * grid[0] * grid[1]:
            best_grid = grid
    return best_grid


def count_image_tokens(
    width: int, height: int, mode: str, max_tiles: int = DEFAULT_MAX_TILES
) -> tuple[int, tuple[int, int] | None]:
    """Count the <image> slots a page needs and return (count, tile_grid or None).

    Each grid row of vision tokens is followed by one newline vector, and one separator ends
    the image, so a q x q global view takes q * (q + 1) + 1 slots.
    """
    spec = mode_spec(mode)
    _check_size(width, height)
    _check_max_tiles(max_tiles)

    tile_grid = _tile_grid_for(width, height, spec, max_tiles)
    side = spec.global_grid_side
    count = side * (side + 1) + 1
    if tile_grid is not None:
        tiles_wide, tiles_high = tile_grid
        tile_side = spec.tile_grid_side
        count += (tile_side * tiles_high) * (tile_side * tiles_wide + 1)
    return count, tile_grid


def prepare_page(image: Image.Image, mode: str, max_tiles: int = DEFAULT_MAX_TILES) -> PreparedPage:
    """Build the global view and the tiles of one page for the given mode."""
    spec = mode_spec(mode)
    _check_max_tiles(max_tiles)
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    _check_size(width, height)

    global_view = to_model_pixels(make_global_view(image, spec))

    tile_grid = _tile_grid_for(width, height, spec, max_tiles)
    tiles = None
    if tile_grid is not None:
        tile_images = cut_tiles(image, tile_grid, spec.image_size)
        tiles = torch.stack([to_model_pixels(tile) for tile in tile_images])  # [n, 3, t, t]

    num_image_tokens, _ = count_image_tokens(width, height, mode, max_tiles)
    return PreparedPage(
        global_view=global_view,
        tiles=tiles,
        tile_grid=tile_grid,
        num_image_tokens=num_image_tokens,
        spec=spec,
        width=width,
        height=height,
    )


def make_global_view(image: Image.Image, spec: ModeSpec) -> Image.Image:
    """Resize (Tiny, Small) or fit and pad (the other modes) the page into a base_size square."""
    side = spec.base_size
    if not spec.crop and spec.image_size <= 640:
        # Tiny and Small distort the page to a square, so the pad below is a no-op.
        image = image.resize((spec.image_size, spec.image_size), Image.Resampling.BICUBIC)
    # ImageOps.pad: the long side becomes `side`, the short side round(short / long * side),
    # and the content is pasted at offset round((side - resized) * 0.5) on the padded axis.
    return ImageOps.pad(image, (side, side), Image.Resampling.BICUBIC, color=PAD_COLOR_RGB)


def cut_tiles(image: Image.Image, tile_grid: tuple[int, int], tile_size: int) -> list[Image.Image]:
    """Resize the page to the whole grid (aspect not kept) and cut tiles left-right, top-down."""
    tiles_wide, tiles_high = tile_grid
    resized = image.resize(
        (tile_size * tiles_wide, tile_size * tiles_high), Image.Resampling.BICUBIC
    )
    tiles = []
    for row in range(tiles_high):
        for column in range(tiles_wide):
            left, top = column * tile_size, row * tile_size
            tiles.append(resized.crop((left, top, left + tile_size, top + tile_size)))
    return tiles


def to_model_pixels(image: Image.Image) -> torch.Tensor:
    """Convert an RGB image to a [3, S, S] float32 tensor in [-1, 1] (mean 0.5, std 0.5)."""
    array = np.array(image, dtype=np.uint8)  # [S, S, 3]
    pixels = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # [3, S, S]
    pixels = pixels.to(torch.float32).div(255)
    return pixels.sub(0.5).div(0.5)


def _tile_grid_for(
    width: int, height: int, spec: ModeSpec, max_tiles: int
) -> tuple[int, int] | None:
    """Return the tile grid of a page, or None when the mode or the page size needs no tiles."""
    if not spec.crop:
        return None
    if width <= spec.image_size and height <= spec.image_size:
        return None
    return choose_tile_grid(width, height, MIN_TILES, max_tiles, tile_size=spec.image_size)


def _check_size(width: int, height: int) -> None:
    if width < 1 or height < 1:
        message = f"invalid image size {width}x{height}: width and height must be at least 1 px"
        raise ValueError(message)


def _check_max_tiles(max_tiles: int) -> None:
    if not MIN_TILES <= max_tiles <= MAX_TILES_LIMIT:
        message = (
            f"invalid max_tiles {max_tiles}: expected {MIN_TILES} to {MAX_TILES_LIMIT} "
            f"(default {DEFAULT_MAX_TILES})"
        )
        raise ValueError(message)

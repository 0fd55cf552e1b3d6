"""Page preprocessing: modes, tile grids, token counts and the pixels of each view."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.deepseek_ocr.preprocess import (
    MODES,
    choose_tile_grid,
    count_image_tokens,
    make_global_view,
    mode_spec,
    prepare_page,
    tile_grid_candidates,
)
from models.deepseek_ocr.vision import assemble_vision_sequence

# (width, height, mode, max_tiles, tile grid, <image> slots): the worked examples of the
# reference token count, computed from its formula with newlines and separator.
TOKEN_TABLE = [
    (1024, 1024, "base", 6, None, 273),
    (800, 600, "tiny", 6, None, 73),
    (800, 600, "small", 6, None, 111),
    (800, 600, "large", 6, None, 421),
    (1024, 1024, "gundam", 6, (2, 2), 693),
    (640, 640, "gundam", 6, None, 273),
    (300, 500, "gundam", 6, None, 273),
    (2480, 3508, "gundam", 6, (2, 3), 903),
    (1190, 1684, "gundam", 6, (2, 3), 903),
    (3508, 2480, "gundam", 6, (3, 2), 893),
    (1920, 1080, "gundam", 6, (2, 1), 483),
    (1920, 1080, "gundam", 9, (4, 2), 1093),
    (1000, 4000, "gundam", 6, (1, 4), 713),
    (2000, 2000, "gundam", 6, (2, 2), 693),
    (2000, 2000, "gundam", 9, (3, 3), 1203),
    (641, 100, "gundam", 6, (6, 1), 883),
]

ODD_SIZES = [
    (1, 1),
    (641, 100),
    (100, 641),
    (640, 640),
    (641, 641),
    (3000, 10),
    (10, 3000),
    (640, 641),
    (1358, 1358),
    (1357, 1357),
    (4000, 1000),
    (333, 777),
    (2, 5000),
]

# Candidate grids for max 6 tiles in the reference order: by tile count, ties in the order
# CPython iterates the reference's set of grids.
MAX_6_CANDIDATES = [
    (1, 2),
    (2, 1),
    (3, 1),
    (1, 3),
    (4, 1),
    (1, 4),
    (2, 2),
    (1, 5),
    (5, 1),
    (6, 1),
    (2, 3),
    (1, 6),
    (3, 2),
]


def make_page_image(width: int, height: int, seed: int = 0) -> Image.Image:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy(), "RGB")


def image_pixels(image: Image.Image) -> torch.Tensor:
    """Return the [h, w, 3] uint8 pixels of an RGB image."""
    return torch.from_numpy(np.array(image, dtype=np.uint8))


def assembled_length(mode: str, tile_grid: tuple[int, int] | None) -> int:
    """Length of the sequence vision.py builds from features of the mode's grid sizes."""
    spec = mode_spec(mode)
    channels = 4
    global_features = torch.zeros(spec.global_grid_side**2, channels)
    tile_features = None
    if tile_grid is not None:
        tiles = tile_grid[0] * tile_grid[1]
        tile_features = torch.zeros(tiles, spec.tile_grid_side**2, channels)
    sequence = assemble_vision_sequence(
        global_features, tile_features, tile_grid, torch.ones(channels), torch.ones(channels)
    )
    return sequence.shape[0]


@pytest.mark.parametrize(("width", "height", "mode", "max_tiles", "grid", "tokens"), TOKEN_TABLE)
def test_count_image_tokens_matches_table(
    width: int, height: int, mode: str, max_tiles: int, grid: tuple[int, int] | None, tokens: int
) -> None:
    count, tile_grid = count_image_tokens(width, height, mode, max_tiles)

    assert tile_grid == grid
    assert count == tokens
    assert assembled_length(mode, tile_grid) == count


@pytest.mark.parametrize(("width", "height", "mode", "max_tiles", "grid", "tokens"), TOKEN_TABLE)
def test_prepare_page_matches_table(
    width: int, height: int, mode: str, max_tiles: int, grid: tuple[int, int] | None, tokens: int
) -> None:
    spec = MODES[mode]

    page = prepare_page(Image.new("RGB", (width, height), (200, 30, 90)), mode, max_tiles)

    assert page.num_image_tokens == tokens
    assert page.tile_grid == grid
    assert page.global_view.shape == (3, spec.base_size, spec.base_size)
    assert page.global_view.dtype == torch.float32
    assert (page.width, page.height) == (width, height)
    if grid is None:
        assert page.tiles is None
    else:
        assert page.tiles is not None
        assert page.tiles.shape == (grid[0] * grid[1], 3, spec.image_size, spec.image_size)


@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
@pytest.mark.parametrize("mode", list(MODES))
def test_count_equals_assembled_length(width: int, height: int, mode: str) -> None:
    for max_tiles in (2, 6, 9):
        count, tile_grid = count_image_tokens(width, height, mode, max_tiles)

        assert count == assembled_length(mode, tile_grid), (width, height, max_tiles)


@pytest.mark.parametrize(("width", "height"), ODD_SIZES)
def test_prepare_page_handles_odd_sizes(width: int, height: int) -> None:
    count, tile_grid = count_image_tokens(width, height, "gundam")

    page = prepare_page(Image.new("RGB", (width, height), (10, 20, 30)), "gundam")

    assert page.num_image_tokens == count
    assert page.tile_grid == tile_grid
    tiles = 0 if page.tiles is None else page.tiles.shape[0]
    assert tiles == (0 if tile_grid is None else tile_grid[0] * tile_grid[1])


def test_tile_candidates_follow_reference_order() -> None:
    assert tile_grid_candidates(2, 6) == MAX_6_CANDIDATES


def test_tile_candidates_respect_bounds() -> None:
    for max_tiles in range(2, 10):
        counts = [wide * high for wide, high in tile_grid_candidates(2, max_tiles)]

        assert min(counts) == 2
        assert max(counts) == max_tiles
        assert counts == sorted(counts)


def test_tile_tie_prefers_larger_grid() -> None:
    """On equal aspect ratios the larger grid wins once the page exceeds half its pixels."""
    assert choose_tile_grid(1920, 1080, max_tiles=9) == (4, 2)
    assert choose_tile_grid(2000, 2000, max_tiles=9) == (3, 3)
    assert choose_tile_grid(1358, 1358, max_tiles=9) == (3, 3)
    assert choose_tile_grid(1357, 1357, max_tiles=9) == (2, 2)
    assert choose_tile_grid(1920, 1080, max_tiles=6) == (2, 1)


def test_global_view_fits_portrait_page() -> None:
    view = make_global_view(Image.new("RGB", (2480, 3508), (0, 0, 0)), MODES["gundam"])

    columns = (image_pixels(view) == 0).all(-1).any(0)
    content = columns.nonzero().flatten()
    assert view.size == (1024, 1024)
    assert content[0].item() == 150
    assert content[-1].item() - content[0].item() + 1 == 724


def test_global_view_upscales_small_page() -> None:
    view = make_global_view(Image.new("RGB", (300, 200), (0, 0, 0)), MODES["base"])

    rows = (image_pixels(view) == 0).all(-1).any(1)
    content = rows.nonzero().flatten()
    assert content[-1].item() - content[0].item() + 1 == 683
    assert content[0].item() == round((1024 - 683) * 0.5)


def test_global_view_pads_with_grey_127() -> None:
    page = prepare_page(Image.new("RGB", (1000, 500), (0, 0, 0)), "base")

    expected = (127 / 255 - 0.5) / 0.5
    assert torch.allclose(page.global_view[:, 0, 0], torch.full((3,), expected))
    assert torch.allclose(page.global_view[:, -1, -1], torch.full((3,), expected))
    assert torch.equal(page.global_view[:, 512, 512], torch.full((3,), -1.0))


@pytest.mark.parametrize("mode", ["tiny", "small"])
def test_tiny_and_small_stretch_without_padding(mode: str) -> None:
    side = MODES[mode].base_size
    page = prepare_page(Image.new("RGB", (1000, 200), (255, 255, 255)), mode)

    assert page.global_view.shape == (3, side, side)
    assert torch.equal(page.global_view, torch.ones(3, side, side))


def test_pixels_map_to_minus_one_one() -> None:
    image = make_page_image(700, 900)
    page = prepare_page(image, "gundam")
    view = make_global_view(image, MODES["gundam"])

    expected = image_pixels(view).float()
    expected = (expected.permute(2, 0, 1) / 255 - 0.5) / 0.5
    assert torch.equal(page.global_view, expected)
    assert page.global_view.min() >= -1.0
    assert page.global_view.max() <= 1.0


def test_tiles_are_row_major_cuts_of_resized_page() -> None:
    image = make_page_image(1300, 700, seed=3)
    page = prepare_page(image, "gundam")

    assert page.tile_grid == (2, 1)
    assert page.tiles is not None
    resized = image.resize((1280, 640), Image.Resampling.BICUBIC)
    right = resized.crop((640, 0, 1280, 640))
    expected = image_pixels(right).float()
    assert torch.equal(page.tiles[1], (expected.permute(2, 0, 1) / 255 - 0.5) / 0.5)


def test_prepare_page_converts_to_rgb() -> None:
    page = prepare_page(Image.new("L", (800, 800), 255), "gundam")

    assert page.global_view.shape == (3, 1024, 1024)
    assert page.tiles is not None


def test_invalid_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="tiny, small, base, large, gundam"):
        count_image_tokens(100, 100, "huge")
    with pytest.raises(ValueError, match="invalid mode"):
        prepare_page(Image.new("RGB", (10, 10)), "Gundam")


@pytest.mark.parametrize("max_tiles", [0, 1, 10])
def test_max_tiles_outside_two_to_nine_is_rejected(max_tiles: int) -> None:
    with pytest.raises(ValueError, match="max_tiles"):
        count_image_tokens(2000, 1000, "gundam", max_tiles)
    with pytest.raises(ValueError, match="max_tiles"):
        prepare_page(Image.new("RGB", (10, 10)), "gundam", max_tiles)
    with pytest.raises(ValueError, match="max_tiles"):
        choose_tile_grid(2000, 1000, max_tiles=max_tiles)


def test_empty_size_is_rejected() -> None:
    with pytest.raises(ValueError, match="at least 1 px"):
        count_image_tokens(0, 100, "base")

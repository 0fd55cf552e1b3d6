"""Vision token layout (tiles, newlines, separator) and the encode_views pipeline."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from models.deepseek_ocr.clip import ClipEncoder
from models.deepseek_ocr.config import OcrConfig, ProjectorConfig
from models.deepseek_ocr.preprocess import prepare_page
from models.deepseek_ocr.projector import Projector
from models.deepseek_ocr.sam import SamEncoder
from models.deepseek_ocr.vision import assemble_vision_sequence, encode_views

NEWLINE = -1.0
SEPARATOR = -2.0
# Exact projector parameter count of the released checkpoint (Linear 2048 -> 1280 with bias).
CHECKPOINT_PROJECTOR_PARAMETERS = 2_622_720


def make_tagged_features(views: int, side: int, offset: float) -> torch.Tensor:
    """Features [views, side*side, 2] whose channels hold (offset + view, cell index)."""
    view_ids = torch.arange(views, dtype=torch.float32)[:, None].expand(views, side * side)
    cell_ids = torch.arange(side * side, dtype=torch.float32)[None].expand(views, side * side)
    return torch.stack([offset + view_ids, cell_ids], dim=-1)


def expected_grid_rows(tiles_wide: int, tiles_high: int, side: int, offset: float) -> list:
    """Spell out, cell by cell, the stitched grid and its newlines as (view, cell) pairs."""
    rows = []
    for row in range(tiles_high * side):
        for column in range(tiles_wide * side):
            tile = (row // side) * tiles_wide + column // side
            cell = (row % side) * side + column % side
            rows.append((offset + tile, float(cell)))
        rows.append((NEWLINE, NEWLINE))
    return rows


def make_vision_modules(seed: int = 0) -> tuple[SamEncoder, ClipEncoder, Projector]:
    torch.manual_seed(seed)
    config = OcrConfig.tiny()
    sam = SamEncoder(config.sam).eval()
    clip = ClipEncoder(config.clip).eval()
    projector = Projector(config.projector).eval()
    return sam, clip, projector


@pytest.mark.parametrize("tile_grid", [(2, 3), (3, 2), (1, 4), (4, 1), (2, 2)])
def test_assemble_puts_tiles_global_separator(tile_grid: tuple[int, int]) -> None:
    tiles_wide, tiles_high = tile_grid
    global_features = make_tagged_features(1, 4, offset=100.0)[0]
    tile_features = make_tagged_features(tiles_wide * tiles_high, 2, offset=0.0)

    sequence = assemble_vision_sequence(
        global_features,
        tile_features,
        tile_grid,
        torch.full((2,), NEWLINE),
        torch.full((2,), SEPARATOR),
    )

    expected = expected_grid_rows(tiles_wide, tiles_high, 2, offset=0.0)
    expected += expected_grid_rows(1, 1, 4, offset=100.0)
    expected.append((SEPARATOR, SEPARATOR))
    assert [tuple(row) for row in sequence.tolist()] == expected


def test_assemble_without_tiles_is_global_grid_only() -> None:
    global_features = make_tagged_features(1, 3, offset=100.0)[0]

    sequence = assemble_vision_sequence(
        global_features, None, None, torch.full((2,), NEWLINE), torch.full((2,), SEPARATOR)
    )

    expected = expected_grid_rows(1, 1, 3, offset=100.0) + [(SEPARATOR, SEPARATOR)]
    assert [tuple(row) for row in sequence.tolist()] == expected
    assert sequence.shape == (3 * 4 + 1, 2)


def test_assemble_casts_special_vectors_to_feature_dtype() -> None:
    global_features = torch.zeros(4, 2, dtype=torch.bfloat16)

    sequence = assemble_vision_sequence(global_features, None, None, torch.ones(2), torch.ones(2))

    assert sequence.dtype == torch.bfloat16


def test_assemble_rejects_tile_count_mismatch() -> None:
    with pytest.raises(ValueError, match="needs 6"):
        assemble_vision_sequence(
            torch.zeros(4, 2), torch.zeros(4, 4, 2), (2, 3), torch.ones(2), torch.ones(2)
        )


def test_assemble_rejects_tiles_without_grid() -> None:
    with pytest.raises(ValueError, match="both"):
        assemble_vision_sequence(
            torch.zeros(4, 2), torch.zeros(4, 4, 2), None, torch.ones(2), torch.ones(2)
        )


def test_assemble_rejects_non_square_global_grid() -> None:
    with pytest.raises(ValueError, match="not a square grid"):
        assemble_vision_sequence(torch.zeros(5, 2), None, None, torch.ones(2), torch.ones(2))


@pytest.mark.parametrize(("side", "grid"), [(512, 8), (640, 10), (1024, 16)])
def test_encode_views_shapes(side: int, grid: int) -> None:
    sam, clip, projector = make_vision_modules()
    views = torch.randn(2, 3, side, side)

    with torch.no_grad():
        tokens = encode_views(sam, clip, projector, views)

    assert tokens.shape == (2, grid * grid, OcrConfig.tiny().projector.n_embed)


def test_encode_views_concatenates_clip_then_sam() -> None:
    """With an identity projector the first channels are CLIP (no class token), then SAM."""
    sam, clip, _ = make_vision_modules()
    width = OcrConfig.tiny().projector.input_dim
    projector = Projector(ProjectorConfig(input_dim=width, n_embed=width))
    with torch.no_grad():
        projector.layers.weight.copy_(torch.eye(width))
        projector.layers.bias.zero_()
    views = torch.randn(1, 3, 640, 640)

    with torch.no_grad():
        tokens = encode_views(sam, clip, projector, views)
        sam_features = sam(views)
        clip_features = clip(sam_features)

    clip_width = clip_features.shape[-1]
    assert torch.allclose(tokens[..., :clip_width], clip_features[:, 1:], atol=1e-6)
    assert torch.allclose(
        tokens[..., clip_width:], sam_features.flatten(2).transpose(1, 2), atol=1e-6
    )


def test_encode_views_runs_in_bfloat16() -> None:
    sam, clip, projector = make_vision_modules()
    views = torch.randn(2, 3, 512, 512)
    with torch.no_grad():
        reference = encode_views(sam, clip, projector, views)
        for module in (sam, clip, projector):
            module.to(torch.bfloat16)

        tokens = encode_views(sam, clip, projector, views.to(torch.bfloat16))

    assert tokens.dtype == torch.bfloat16
    max_difference = (tokens.float() - reference).abs().max().item()
    assert max_difference < 0.25 * reference.abs().max().item(), f"max diff {max_difference:.3e}"


def test_page_sequence_length_equals_token_count() -> None:
    """A Gundam page run through the tiny network fills exactly num_image_tokens slots."""
    sam, clip, projector = make_vision_modules()
    page = prepare_page(Image.new("RGB", (1300, 700), (90, 90, 90)), "gundam")
    assert page.tiles is not None
    channels = OcrConfig.tiny().projector.n_embed

    with torch.no_grad():
        global_tokens = encode_views(sam, clip, projector, page.global_view[None])
        tile_tokens = encode_views(sam, clip, projector, page.tiles)
    sequence = assemble_vision_sequence(
        global_tokens[0], tile_tokens, page.tile_grid, torch.zeros(channels), torch.zeros(channels)
    )

    assert page.tile_grid == (2, 1)
    assert sequence.shape == (page.num_image_tokens, channels)


def test_projector_full_size_parameters_match_checkpoint() -> None:
    with torch.device("meta"):
        projector = Projector(ProjectorConfig())

    assert sum(tensor.numel() for tensor in projector.parameters()) == (
        CHECKPOINT_PROJECTOR_PARAMETERS
    )
    assert tuple(projector.layers.weight.shape) == (1280, 2048)

"""Vision tokens for one page: encode views, then lay out grids, newlines and the separator.

Dimension legend: B batch, T tokens, D hidden, H heads, E experts, K top_k; C channels of a
vision token (n_embed), q grid side of the global view, ql grid side of one tile, n tiles.

Layout of one page's sequence (it fills the prompt's <image> slots in order):
1. Tiles, when there are any, stitched into one (ql * tiles_high) x (ql * tiles_wide) grid,
   row-major, with the image_newline vector after every row.
2. The q x q global view grid, row-major, with image_newline after every row (the last too).
3. One view_separator vector.
Its length is what preprocess.count_image_tokens returns.
"""

from __future__ import annotations

import math

import torch

from models.deepseek_ocr.clip import ClipEncoder
from models.deepseek_ocr.projector import Projector
from models.deepseek_ocr.sam import SamEncoder


def encode_views(
    sam: SamEncoder, clip: ClipEncoder, projector: Projector, views: torch.Tensor
) -> torch.Tensor:
    """Encode views [B, 3, S, S] of one size into vision tokens [B, q*q, C].

    CLIP output (class token dropped) comes first and SAM features second in the fused
    channels, the order the projector was trained on.
    """
    sam_features = sam(views)  # [B, C_sam, q, q]
    clip_features = clip(sam_features)  # [B, q*q + 1, D_clip]

    sam_tokens = sam_features.flatten(2).transpose(1, 2)  # [B, q*q, C_sam]
    fused = torch.cat([clip_features[:, 1:], sam_tokens], dim=-1)  # [B, q*q, D_clip + C_sam]
    return projector(fused)  # [B, q*q, C]


def assemble_vision_sequence(
    global_features: torch.Tensor,
    tile_features: torch.Tensor | None,
    tile_grid: tuple[int, int] | None,
    image_newline: torch.Tensor,
    view_separator: torch.Tensor,
) -> torch.Tensor:
    """Lay out one page's vision tokens as [local grid], global grid, separator -> [T_img, C].

    tile_features [n, ql*ql, C] are in row-major tile order and tile_grid is
    (tiles_wide, tiles_high). Pass None for both when the page has no tiles.
    """
    if (tile_features is None) != (tile_grid is None):
        message = "tile_features and tile_grid must both be given or both be None"
        raise ValueError(message)

    parts = []
    if tile_features is not None and tile_grid is not None:
        parts.append(_with_newlines(_stitch_tiles(tile_features, tile_grid), image_newline))

    side = _square_side(global_features.shape[0], "global_features")
    channels = global_features.shape[-1]
    global_grid = global_features.reshape(side, side, channels)  # [q, q, C]
    parts.append(_with_newlines(global_grid, image_newline))

    parts.append(view_separator.to(global_features.dtype)[None])  # [1, C]
    return torch.cat(parts, dim=0)  # [T_img, C]


def _stitch_tiles(tile_features: torch.Tensor, tile_grid: tuple[int, int]) -> torch.Tensor:
    """Join per-tile grids [n, ql*ql, C] into one [tiles_high*ql, tiles_wide*ql, C] grid."""
    tiles_wide, tiles_high = tile_grid
    count, cells, channels = tile_features.shape
    if count != tiles_wide * tiles_high:
        message = (
            f"tile_features holds {count} tiles but tile_grid {tiles_wide}x{tiles_high} "
            f"needs {tiles_wide * tiles_high}"
        )
        raise ValueError(message)
    side = _square_side(cells, "tile_features")

    grid = tile_features.reshape(tiles_high, tiles_wide, side, side, channels)
    grid = grid.permute(0, 2, 1, 3, 4)  # [tiles_high, ql, tiles_wide, ql, C]
    return grid.reshape(tiles_high * side, tiles_wide * side, channels)  # [rows, columns, C]


def _with_newlines(grid: torch.Tensor, image_newline: torch.Tensor) -> torch.Tensor:
    """Append the newline vector to every row of [rows, columns, C] and flatten row-major."""
    rows, _, channels = grid.shape
    newline_column = image_newline.to(grid.dtype).expand(rows, 1, channels)  # [rows, 1, C]
    grid = torch.cat([grid, newline_column], dim=1)  # [rows, columns + 1, C]
    return grid.reshape(-1, channels)  # [rows * (columns + 1), C]


def _square_side(cells: int, name: str) -> int:
    side = math.isqrt(cells)
    if side * side != cells:
        message = f"{name} has {cells} tokens per view, which is not a square grid"
        raise ValueError(message)
    return side

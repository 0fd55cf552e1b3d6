"""`ocrq model tokens`: <image> slot counts and tile grids from the command line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli.main import cli
from models.deepseek_ocr.preprocess import count_image_tokens


def run_tokens(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["model", "tokens", *arguments])
    return result.exit_code, result.output


def test_tokens_prints_count_and_grid() -> None:
    exit_code, output = run_tokens("--mode", "gundam", "--size", "2480x3508")

    assert exit_code == 0
    assert "<image> slots: 903" in output
    assert "tile grid: 2x3 (6 tiles of 640 px)" in output


def test_tokens_without_tiles_prints_none() -> None:
    exit_code, output = run_tokens("--mode", "base", "--size", "3000x1000")

    assert exit_code == 0
    assert "<image> slots: 273" in output
    assert "tile grid: none" in output


@pytest.mark.parametrize(
    ("mode", "size", "max_tiles"),
    [("gundam", "1920x1080", 9), ("gundam", "641x100", 6), ("tiny", "800x600", 6)],
)
def test_tokens_json_matches_count(mode: str, size: str, max_tiles: int) -> None:
    exit_code, output = run_tokens(
        "--mode", mode, "--size", size, "--max-tiles", str(max_tiles), "--json"
    )

    width, height = (int(part) for part in size.split("x"))
    count, tile_grid = count_image_tokens(width, height, mode, max_tiles)
    summary = json.loads(output)
    assert exit_code == 0
    assert summary["image_tokens"] == count
    assert summary["tile_grid"] == (None if tile_grid is None else list(tile_grid))
    parts = summary["global_slots"] + summary["tile_slots"] + summary["separator_slots"]
    assert parts == count


@pytest.mark.parametrize("size", ["12", "0x100", "100x", "axb", "-5x10", "10x10x10"])
def test_tokens_rejects_bad_size_in_one_line(size: str) -> None:
    exit_code, output = run_tokens("--size", size)

    assert exit_code == 1
    assert output.strip().count("\n") == 0
    assert "invalid --size" in output


def test_tokens_rejects_unknown_mode_in_one_line() -> None:
    exit_code, output = run_tokens("--mode", "huge", "--size", "100x100")

    assert exit_code == 1
    assert output.strip().count("\n") == 0
    assert "invalid mode 'huge'" in output


@pytest.mark.parametrize("max_tiles", ["1", "10"])
def test_tokens_rejects_max_tiles_out_of_range(max_tiles: str) -> None:
    exit_code, output = run_tokens("--size", "2000x1000", "--max-tiles", max_tiles)

    assert exit_code == 1
    assert output.strip().count("\n") == 0
    assert "invalid max_tiles" in output

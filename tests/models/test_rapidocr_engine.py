"""The rapidocr engine on real corpus pages: accuracy gates and the shape of its page results.

Each corpus page is read once per test session (functools.cache), so the gate and the shape tests
for one page share a single run. The six pages take about 20 s together on 2 idle CPU cores, an
estimate from single runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.bench_metrics import character_error_rate, word_f1
from models.engine import PageInput, PageOptions, PageResult
from models.rapidocr_engine import RapidOcrEngine, median_skew_deg
from tests.conftest import CORPUS_DIR

# Maximum whitespace-normalised CER against the .gt.txt file, per corpus page.
CER_GATES = {
    "phototest.tif": 0.02,
    "eurotext.tif": 0.05,
    "8071_093.3B.tif": 0.15,
    "linn.png": 0.15,
    "oyo.png": 0.20,
    # The same page as phototest.tif, turned 90 degrees in its pixels.
    "phototest-rotated-L.png": 0.05,
}


@functools.cache
def load_engine() -> RapidOcrEngine:
    return RapidOcrEngine()


@functools.cache
def read_corpus_page(name: str) -> PageResult:
    image = Image.open(CORPUS_DIR / name).convert("RGB")
    (result,) = load_engine().run_pages([PageInput(image, page_index=0)], PageOptions())
    return result


def ground_truth(corpus_dir: Path, name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return (corpus_dir / f"{stem}.gt.txt").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", list(CER_GATES))
def test_corpus_page_cer_within_gate(corpus_dir: Path, name: str) -> None:
    result = read_corpus_page(name)

    cer = character_error_rate(result.markdown, ground_truth(corpus_dir, name))

    assert cer <= CER_GATES[name], f"{name}: CER {cer:.3f} over the gate {CER_GATES[name]}"


def test_two_column_page_reads_left_column_first(corpus_dir: Path) -> None:
    """linn.png: the left column's last line comes before the right column's first line."""
    markdown = read_corpus_page("linn.png").markdown

    left_end = markdown.find("To overdub notes at specific points")
    right_start = markdown.find("simply use LOCATE")

    assert 0 <= left_end < right_start


def test_magazine_page_word_f1_high(corpus_dir: Path) -> None:
    result = read_corpus_page("8071_093.3B.tif")

    score = word_f1(result.markdown, ground_truth(corpus_dir, "8071_093.3B.tif"))

    assert score >= 0.9, f"word F1 {score:.3f}"


def test_result_has_blocks_timings_and_size(corpus_dir: Path) -> None:
    result = read_corpus_page("phototest.tif")

    assert (result.width, result.height) == (640, 480)
    assert result.page_index == 0
    assert result.finish_reason == "complete"
    assert set(result.timings_ms) == {"detect", "recognise", "layout"}
    assert result.blocks
    for block in result.blocks:
        x1, y1, x2, y2 = block.bbox
        assert 0 <= x1 < x2 <= result.width
        assert 0 <= y1 < y2 <= result.height


def test_page_on_its_side_is_read_upright(corpus_dir: Path) -> None:
    """A 480x640 page whose lines run vertically comes back as the 640x480 upright page."""
    result = read_corpus_page("phototest-rotated-L.png")

    assert (result.width, result.height) == (640, 480)
    assert result.markdown.startswith("This is a lot of 12 point text")


def test_tall_lines_become_title_blocks(corpus_dir: Path) -> None:
    result = read_corpus_page("linn.png")

    titles = [block.text for block in result.blocks if block.label == "title"]

    assert any("LinnSequencer" in title for title in titles)
    assert result.markdown.startswith("# ")
    assert {block.label for block in result.blocks} >= {"title", "text"}


def test_blank_page_gives_empty_result() -> None:
    blank = Image.new("RGB", (320, 200), "white")

    (result,) = load_engine().run_pages([PageInput(blank, page_index=3)], PageOptions())

    assert result.page_index == 3
    assert result.markdown == ""
    assert result.blocks == []
    assert result.finish_reason == "complete"


def test_pages_come_back_in_input_order(make_page_image: Callable[..., Image.Image]) -> None:
    first = make_page_image(lines=("First page here",))
    second = make_page_image(lines=("Second page now",))
    pages = [PageInput(first, page_index=0), PageInput(second, page_index=1)]

    results = load_engine().run_pages(pages, PageOptions(task="ocr"))

    assert [result.page_index for result in results] == [0, 1]
    assert "First" in results[0].markdown
    assert "Second" in results[1].markdown


def test_locate_keeps_only_matching_blocks(make_page_image: Callable[..., Image.Image]) -> None:
    image = make_page_image(lines=("Invoice total", "", "", "Shipping address"), size_px=(640, 400))

    (result,) = load_engine().run_pages(
        [PageInput(image, page_index=0)], PageOptions(task="locate", target="shipping")
    )

    assert [block.text for block in result.blocks] == ["Shipping address"]


def test_unsupported_task_raises() -> None:
    with pytest.raises(ValueError, match="describe"):
        load_engine().run_pages([], PageOptions(task="describe"))


def test_skew_is_median_slope_of_long_lines() -> None:
    """Lines falling 2 degrees to the right give +2; a short, steep box does not vote."""
    slope = np.tan(np.radians(2.0))

    def make_quad(x: float, y: float, width: float, height: float, rise: float) -> np.ndarray:
        return np.array(
            [(x, y), (x + width, y + rise), (x + width, y + rise + height), (x, y + height)]
        )

    quads = [make_quad(0, row * 50, 800, 30, 800 * slope) for row in range(3)]
    quads.append(make_quad(0, 200, 40, 30, 20))

    assert median_skew_deg(quads) == pytest.approx(2.0, abs=0.01)
    assert median_skew_deg(quads[:2]) == 0.0

"""The CPU engine: RapidOCR's ONNX models find and read lines; models.reading_order orders them.

RapidOCR (package rapidocr_onnxruntime) ships PP-OCRv4 detection and recognition models inside
its wheel, so this engine runs with no download. The engine runs
the models itself rather than through `RapidOCR.__call__`, for one reason: it detects lines on
a copy of the page scaled to at most `detect_max_side_px`, but crops each line from the full page
for recognition. RapidOCR's own call crops from the scaled copy, and on a 2892x4093 receipt that
loses the spaces between words and whole long lines.

Legend: a quad is the 4x2 array of corners (top-left, top-right, bottom-right, bottom-left) that the
detector returns, in pixels of the image it was given.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import numpy as np
from PIL import Image
from rapidocr_onnxruntime import RapidOCR

from models.engine import Block, PageInput, PageOptions, PageResult
from models.reading_order import TextBlock, TextLine, order_lines, render_markdown

# Detection runs on a copy no larger than this. On the 300 dpi corpus pages, 1600 px gives the same
# character error rate as 2000 px (RapidOCR's default) and halves the detection time.
DEFAULT_DETECT_MAX_SIDE_PX = 1600
# Lines recognised with a lower confidence are dropped (RapidOCR's default text_score).
DEFAULT_MIN_SCORE = 0.5
# A crop this much taller than wide is vertical text and is turned to read left to right.
_VERTICAL_RATIO = 1.5
# Pages whose long lines slope by at least this much are straightened before reading.
_MIN_DESKEW_DEG = 0.5
# Only lines this many times wider than tall vote on the page's skew.
_SKEW_LINE_ASPECT = 3.0
_SUPPORTED_TASKS = ("markdown", "ocr", "free", "locate")


class RapidOcrEngine:
    """RapidOCR line detection and recognition on CPU, with markdown in reading order."""

    name = "rapidocr"
    # The tasks run_pages accepts; a worker fails a job asking for another before its pages.
    supported_tasks = _SUPPORTED_TASKS

    def __init__(
        self,
        *,
        threads: int | None = None,
        detect_max_side_px: int = DEFAULT_DETECT_MAX_SIDE_PX,
        min_score: float = DEFAULT_MIN_SCORE,
    ) -> None:
        """Load the ONNX models once; `threads` defaults to the CPUs this process may use."""
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        # One session thread per CPU; inter-op parallelism does not help these sequential graphs.
        self._ocr = RapidOCR(intra_op_num_threads=max(1, threads), inter_op_num_threads=1)
        self._detect_max_side_px = detect_max_side_px
        self._min_score = min_score

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        """Read each page on its own; the results come back in input order."""
        if options.task not in _SUPPORTED_TASKS:
            message = (
                f"the rapidocr engine supports tasks {', '.join(_SUPPORTED_TASKS)}; "
                f"got {options.task!r}"
            )
            raise ValueError(message)
        return [self._read_page(page, options) for page in pages]

    def read_lines(self, image: Image.Image) -> tuple[Image.Image, list[TextLine], dict[str, int]]:
        """Detect and recognise the text lines of one RGB page, in detector order, with timings.

        When most detected lines run vertically, the page lies on its side: it is read turned a
        quarter turn each way, and the reading with the larger confidence-weighted character
        count wins. A page whose lines slope by half a degree or more is rotated straight and
        detected again. The image returned is the one the lines were read from.
        """
        timings_ms = {"detect": 0, "recognise": 0}
        quads = self._detect_timed(image, timings_ms)
        if not _mostly_vertical(quads):
            skew_deg = median_skew_deg(quads)
            if abs(skew_deg) >= _MIN_DESKEW_DEG:
                # Straighten the page so that line boxes and column gutters line up again.
                image = image.rotate(
                    skew_deg, Image.Resampling.BICUBIC, expand=True, fillcolor=(255, 255, 255)
                )
                quads = self._detect_timed(image, timings_ms)
            return image, self._recognise_timed(image, quads, timings_ms), timings_ms

        best: tuple[float, Image.Image, list[TextLine]] | None = None
        for transpose in (Image.Transpose.ROTATE_270, Image.Transpose.ROTATE_90):
            turned = image.transpose(transpose)
            turned_quads = self._detect_timed(turned, timings_ms)
            lines = self._recognise_timed(turned, turned_quads, timings_ms)
            weight = sum(line.score * len(line.text) for line in lines)
            if best is None or weight > best[0]:
                best = (weight, turned, lines)
        assert best is not None
        return best[1], best[2], timings_ms

    def _detect_timed(self, image: Image.Image, timings_ms: dict[str, int]) -> list[np.ndarray]:
        started = time.perf_counter()
        quads = self._detect(image)
        timings_ms["detect"] += _elapsed_ms(started)
        return quads

    def _recognise_timed(
        self, image: Image.Image, quads: list[np.ndarray], timings_ms: dict[str, int]
    ) -> list[TextLine]:
        started = time.perf_counter()
        lines: list[TextLine] = []
        if quads:
            # NOTE: RapidOCR's 180-degree line classifier is not run, because on upright 300 dpi
            # scans it turned correct lines upside down (linn.png CER 0.03 -> 0.07). A page
            # scanned upside down is therefore read as noise.
            crops = [_crop_line(image, quad) for quad in quads]
            recognised, _ = self._ocr.text_rec(crops)
            for quad, (text, score, *_) in zip(quads, recognised, strict=True):
                if float(score) >= self._min_score and text.strip():
                    lines.append(TextLine.from_quad(quad.tolist(), text, float(score)))
        timings_ms["recognise"] += _elapsed_ms(started)
        return lines

    def _read_page(self, page: PageInput, options: PageOptions) -> PageResult:
        image = page.image if page.image.mode == "RGB" else page.image.convert("RGB")
        # NOTE: for a page read turned or straightened, width, height and boxes describe the page
        # as read, and PageResult has no field that records the rotation.
        image, lines, timings_ms = self.read_lines(image)

        started = time.perf_counter()
        blocks = order_lines(lines)
        if options.task == "locate":
            blocks = _blocks_containing(blocks, options.target or "")
        markdown = render_markdown(blocks)
        if options.task in ("ocr", "free"):
            markdown = "\n\n".join(block.text for block in blocks)
        timings_ms["layout"] = _elapsed_ms(started)

        return PageResult(
            page_index=page.page_index,
            width=image.width,
            height=image.height,
            markdown=markdown,
            blocks=[_to_block(block) for block in blocks],
            raw_text="\n".join(line.text for line in lines),
            finish_reason="complete",
            timings_ms=timings_ms,
        )

    def _detect(self, image: Image.Image) -> list[np.ndarray]:
        """Return line quads in page pixels, detected on a copy scaled to the detection size."""
        scale = min(1.0, self._detect_max_side_px / max(image.width, image.height))
        scaled = image
        if scale < 1.0:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            scaled = image.resize(size, Image.Resampling.BILINEAR)

        bgr = np.ascontiguousarray(np.asarray(scaled)[:, :, ::-1])  # [H, W, 3] BGR, as cv2 reads
        quads, _ = self._ocr.text_det(bgr)
        if quads is None or len(quads) == 0:
            return []
        return [np.asarray(quad, dtype=np.float64) / scale for quad in quads]


def _mostly_vertical(quads: list[np.ndarray]) -> bool:
    """Return whether more than half of the line quads are taller than wide (a page on its side)."""
    vertical = 0
    for top_left, top_right, _, bottom_left in quads:
        width = float(np.linalg.norm(top_right - top_left))
        height = float(np.linalg.norm(bottom_left - top_left))
        if height >= _VERTICAL_RATIO * width:
            vertical += 1
    return vertical * 2 > len(quads)


def median_skew_deg(quads: list[np.ndarray]) -> float:
    """Return the median slope of the long line quads in degrees, positive when lines fall right.

    Returns 0.0 when fewer than three lines are long enough to vote.
    """
    angles = []
    for top_left, top_right, _, bottom_left in quads:
        dx, dy = top_right - top_left
        height = float(np.linalg.norm(bottom_left - top_left))
        if float(np.hypot(dx, dy)) >= _SKEW_LINE_ASPECT * max(height, 1.0):
            angles.append(float(np.degrees(np.arctan2(dy, dx))))
    if len(angles) < 3:
        return 0.0
    return float(np.median(angles))


def _crop_line(image: Image.Image, quad: np.ndarray) -> np.ndarray:
    """Cut one line out of the page along its quad and return it as a BGR array [h, w, 3]."""
    top_left, top_right, bottom_right, bottom_left = quad
    width = max(
        float(np.linalg.norm(top_right - top_left)),
        float(np.linalg.norm(bottom_right - bottom_left)),
        1.0,
    )
    height = max(
        float(np.linalg.norm(bottom_left - top_left)),
        float(np.linalg.norm(bottom_right - top_right)),
        1.0,
    )
    # QUAD maps the output rectangle's corners to these source points, counter-clockwise from
    # the top-left.
    source = (*top_left, *bottom_left, *bottom_right, *top_right)
    crop = image.transform(
        (round(width), round(height)),
        Image.Transform.QUAD,
        tuple(float(value) for value in source),
        Image.Resampling.BICUBIC,
    )
    if crop.height >= _VERTICAL_RATIO * crop.width:
        crop = crop.rotate(90, expand=True)
    return np.ascontiguousarray(np.asarray(crop)[:, :, ::-1])


def _blocks_containing(blocks: list[TextBlock], target: str) -> list[TextBlock]:
    needle = target.casefold().strip()
    if not needle:
        return []
    return [block for block in blocks if needle in block.text.casefold()]


def _to_block(block: TextBlock) -> Block:
    label = "text"
    if block.kind == "heading":
        label = "title" if block.level == 1 else "sub_title"
    return Block(label=label, bbox=block.box, text=block.text)


def _elapsed_ms(started: float) -> int:
    return round((time.perf_counter() - started) * 1000)

"""The Engine protocol that every OCR engine implements, and the page result it returns.

An engine is pure compute: page images in, page results out. It never touches storage, the
database or the network; the worker (or `ocrq run`) does that around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from PIL import Image

Task = Literal["markdown", "ocr", "free", "figure", "describe", "locate"]
Mode = Literal["tiny", "small", "base", "large", "gundam"]
FinishReason = Literal["eos", "length", "loop", "complete"]

TASKS: tuple[str, ...] = ("markdown", "ocr", "free", "figure", "describe", "locate")
MODES: tuple[str, ...] = ("tiny", "small", "base", "large", "gundam")


@dataclass(frozen=True)
class PageOptions:
    """Per-job choices that shape how an engine reads a page."""

    mode: Mode = "gundam"
    task: Task = "markdown"
    # The phrase to find when task is "locate".
    target: str | None = None


@dataclass(frozen=True)
class PageInput:
    """One page image (RGB, EXIF already applied) and its 0-based index in the document."""

    image: Image.Image
    page_index: int


@dataclass(frozen=True)
class Block:
    """One layout region: a label (text, title, table, image, ...), a pixel box and its text."""

    label: str
    bbox: tuple[int, int, int, int]  # x1, y1, x2, y2 in page pixels
    text: str

    def to_dict(self) -> dict[str, object]:
        return {"label": self.label, "bbox": list(self.bbox), "text": self.text}


@dataclass(frozen=True)
class Figure:
    """A cropped image region; `name` is the file name the markdown links to (`{page}_{k}.jpg`)."""

    name: str
    bbox: tuple[int, int, int, int]
    image: Image.Image


@dataclass
class PageResult:
    """What an engine returns for one page."""

    page_index: int
    width: int
    height: int
    markdown: str
    blocks: list[Block]
    raw_text: str
    finish_reason: FinishReason
    prompt_tokens: int = 0
    output_tokens: int = 0
    timings_ms: dict[str, int] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Return the JSON form stored in result.json (figures are stored apart, by name)."""
        return {
            "index": self.page_index,
            "width": self.width,
            "height": self.height,
            "markdown": self.markdown,
            "blocks": [block.to_dict() for block in self.blocks],
            "raw_text": self.raw_text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "timings_ms": dict(self.timings_ms),
            "figures": [figure.name for figure in self.figures],
        }


class Engine(Protocol):
    """An OCR engine, loaded once per process and reused for every page."""

    name: str

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        """Read a batch of pages; the results come back in input order."""
        ...

"""Post-processing of DeepSeek-OCR output: grounding tags to blocks, figure crops and markdown.

The model marks each layout region as `<|ref|>LABEL<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>`
followed by the region's content. Coordinates are integers on a 0-999 grid over the original
page. A pixel coordinate is int(x / 999 * W), truncated as in the reference code, and clamped to
the page here.

Cleanup, in order:
1. strip a trailing end-of-sentence string and surrounding whitespace;
2. parse each tag group's box list with a literal parser for nested integer lists (never eval);
   a group whose payload does not parse stays in the markdown verbatim and yields no block;
3. an `image` group becomes one markdown link per box, `![](figures/{page}_{k}.jpg)`, where k
   counts figure boxes on the page, and each box is cropped from the page image;
4. every other group is removed (the content after it stays);
5. `\\coloneqq` becomes `:=` and `\\eqqcolon` becomes `=:`;
6. runs of three or more newlines collapse to two.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from PIL import Image

from models.engine import Block, Figure

EOS_TEXT = "<｜end▁of▁sentence｜>"
FIGURE_LABEL = "image"
GRID_MAX = 999  # coordinates are emitted on a 0..999 grid
_MAX_LIST_DEPTH = 2  # [[x1, y1, x2, y2], ...]

# Label and payload may not contain "<|" / "<", so a stray tag cannot swallow later groups.
_TAG_GROUP = re.compile(
    r"<\|ref\|>(?P<label>(?:(?!<\|).)*?)<\|/ref\|><\|det\|>(?P<payload>[^<]*?)<\|/det\|>",
    re.DOTALL,
)
# Integers are capped at 9 digits, so int() never gets a huge digit string.
_LIST_TOKEN = re.compile(r"\s*(?:(?P<open>\[)|(?P<close>\])|(?P<comma>,)|(?P<int>[+-]?\d{1,9}))")
_BLANK_LINES = re.compile(r"\n{3,}")
_TEXT_REPLACEMENTS = ((r"\coloneqq", ":="), (r"\eqqcolon", "=:"))

PixelBox = tuple[int, int, int, int]
NestedInts = int | list["NestedInts"]


@dataclass(frozen=True)
class _TagGroup:
    label: str
    boxes: list[list[int]] | None  # None when the payload did not parse
    start: int
    end: int


def postprocess_output(
    raw_text: str, image: Image.Image, page_index: int
) -> tuple[str, list[Block], list[Figure]]:
    """Turn one page's raw model text into (markdown, blocks, figures).

    Boxes are mapped to the pixels of `image` (the original page). A box with several parts
    yields one block per part; the region's text goes to the first and the others get "".
    Figure boxes with no area after clamping get neither a crop nor a link.
    """
    text = _strip_eos(raw_text)
    groups = _find_tag_groups(text)
    width, height = image.size

    markdown_parts: list[str] = []
    blocks: list[Block] = []
    figures: list[Figure] = []
    cursor = 0
    for index, group in enumerate(groups):
        markdown_parts.append(text[cursor : group.start])
        cursor = group.end
        if group.boxes is None:
            markdown_parts.append(text[group.start : group.end])
            continue

        next_start = groups[index + 1].start if index + 1 < len(groups) else len(text)
        content = clean_text(text[group.end : next_start].strip())
        pixel_boxes = [to_pixel_box(box, width, height) for box in group.boxes]
        for part, box in enumerate(pixel_boxes):
            blocks.append(Block(label=group.label, bbox=box, text=content if part == 0 else ""))
        if group.label != FIGURE_LABEL:
            continue

        for box in pixel_boxes:
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            name = f"{page_index}_{len(figures)}.jpg"
            figures.append(Figure(name=name, bbox=box, image=image.crop(box).convert("RGB")))
            markdown_parts.append(f"![](figures/{name})\n")
    markdown_parts.append(text[cursor:])

    markdown = clean_text("".join(markdown_parts)).strip()
    return markdown, blocks, figures


def clean_text(text: str) -> str:
    """Replace the LaTeX colon-equals macros and collapse runs of 3+ newlines to two."""
    for macro, replacement in _TEXT_REPLACEMENTS:
        text = text.replace(macro, replacement)
    return _BLANK_LINES.sub("\n\n", text)


def to_pixel_box(box: list[int], width: int, height: int) -> PixelBox:
    """Map a 0-999 grid box to page pixels, ordered (x1 <= x2, y1 <= y2) and clamped to the page."""
    x1, y1, x2, y2 = (
        _to_pixels(box[0], width),
        _to_pixels(box[1], height),
        _to_pixels(box[2], width),
        _to_pixels(box[3], height),
    )
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def _to_pixels(coordinate: int, size: int) -> int:
    clamped = min(max(coordinate, 0), GRID_MAX)
    return int(clamped / GRID_MAX * size)


def parse_boxes(payload: str) -> list[list[int]] | None:
    """Parse a det payload into boxes of four ints, or return None if it is malformed.

    Accepts a list of boxes `[[x1, y1, x2, y2], ...]` or one bare box `[x1, y1, x2, y2]`.
    """
    value = parse_int_lists(payload)
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, int) for item in value):
        value = [value]
    boxes: list[list[int]] = []
    for item in value:
        if not isinstance(item, list) or len(item) != 4:
            return None
        numbers = [number for number in item if isinstance(number, int)]
        if len(numbers) != 4:
            return None
        boxes.append(numbers)
    return boxes


def parse_int_lists(source: str, max_depth: int = _MAX_LIST_DEPTH) -> NestedInts | None:
    """Parse a literal made of integers and brackets, at most `max_depth` deep; None if invalid.

    A tiny iterative parser: it accepts `[1, [2, 3], []]`-style literals only, so model output
    is never evaluated as code, and deep nesting cannot exhaust the Python stack.
    """
    stack: list[list[NestedInts]] = []
    result: NestedInts | None = None
    expect_value = True  # after "[" or ",": a value (or "]" right after "[") must follow
    position = 0
    source = source.strip()
    while position < len(source):
        match = _LIST_TOKEN.match(source, position)
        if match is None or result is not None:
            return None
        position = match.end()

        if match["open"]:
            if not expect_value or len(stack) >= max_depth:
                return None
            stack.append([])
        elif match["int"]:
            if not expect_value or not stack:
                return None
            stack[-1].append(int(match["int"]))
            expect_value = False
        elif match["comma"]:
            if expect_value or not stack:
                return None
            expect_value = True
        else:  # "]"
            if not stack or (expect_value and stack[-1]):
                return None
            finished = stack.pop()
            if stack:
                stack[-1].append(finished)
            else:
                result = finished
            expect_value = False
    return result if not stack else None


def _find_tag_groups(text: str) -> list[_TagGroup]:
    return [
        _TagGroup(
            label=match["label"].strip(),
            boxes=parse_boxes(match["payload"]),
            start=match.start(),
            end=match.end(),
        )
        for match in _TAG_GROUP.finditer(text)
    ]


def _strip_eos(text: str) -> str:
    text = text.strip()
    if text.endswith(EOS_TEXT):
        text = text[: -len(EOS_TEXT)]
    return text.strip()

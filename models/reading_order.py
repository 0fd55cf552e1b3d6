"""Reading order for detected text lines: columns, bands, paragraphs and headings.

A text detector returns lines as boxes in no useful order. This module orders them the way a person
reads the page and groups them into blocks:

1. Tall lines side by side on one row (a title set across a column gutter) become one line.
2. Recursive XY-cut on the line boxes. A node is first split into columns at vertical gutters,
   which are x ranges that no line covers over the node's full height. Columns are read left to
   right. Without a gutter the node is split into bands at horizontal gaps, and consecutive bands
   are merged again while they still share a gutter and sit close, so a multi-column section whose
   columns have coincident paragraph breaks stays one node. A band whose lines cross the gutter
   (a full-width heading or paragraph) ends the section, so spanning titles are read where they
   stand. A column split that would leave a column of one line yields to a split into bands, so
   sparse labels are read row by row.
3. In each leaf, lines are grouped into rows and rows into paragraphs at vertical gaps, at bullets,
   and after a short row when the next row is indented or the short row ends a sentence. Rows
   much taller than the page's median line become headings: level 1 from twice the body height,
   level 2 below that.
4. Lines of a paragraph are joined with spaces. A word hyphenated at a line end is joined when the
   hyphen follows a letter and the next line starts with a lower-case letter.

Legend: h is a line box's height in pixels, and the body height is the median h on the page. Every
threshold below is a multiple of the body height, so the rules do not depend on the resolution.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

# Column gutters narrower than this are taken for word spaces. The narrowest gutter of the 300 dpi
# magazine scan 8071_093.3B.tif measures 0.38 body heights between the detector's boxes.
_MIN_GUTTER_HEIGHTS = 0.3
# In a node of N lines, up to N // 20 lines may cross a gutter, each reaching at most one body
# height past it.
_GUTTER_CROSSINGS_PER_LINE = 20
# Nodes of at least this many lines tolerate one crossing line, even below 20 lines.
_MIN_LINES_FOR_CROSSING = 6
_MAX_GUTTER_OVERHANG_HEIGHTS = 1.0
# Consecutive bands further apart than this are separate sections even when they share a gutter.
_MAX_BAND_MERGE_GAP_HEIGHTS = 1.0
# A row at least this much taller than the body height is a heading.
_HEADING_HEIGHTS = 1.5
# A heading row at least this much taller than the body height gets level 1, others level 2.
_TOP_HEADING_HEIGHTS = 2.0
# Tall lines on one row closer than this (in their own heights) are one title split by the detector.
_TITLE_JOIN_GAP_HEIGHTS = 1.0
# A vertical gap between rows larger than this starts a new paragraph.
_PARAGRAPH_GAP_HEIGHTS = 0.3
# A row indented by more than this, after a row ending this far short of the right edge, starts a
# new paragraph.
_INDENT_HEIGHTS = 0.5
_SHORT_LINE_HEIGHTS = 1.5
# A short row ending in one of these, followed by a row starting with a capital, ends a paragraph.
_SENTENCE_ENDS = (".", "!", "?", ":", '"', "”", ")")
# A row starting with a bullet glyph, or with a dash or asterisk and a space, is a list item.
_BULLET_GLYPHS = "•·●▪■◦‣∙○◆►"
_BULLET_MARKS = "-–*"

BlockKind = Literal["heading", "paragraph", "list_item"]


@dataclass(frozen=True)
class TextLine:
    """One detected line: its axis-aligned box in page pixels, recognised text and confidence."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    text: str
    score: float = 1.0

    @classmethod
    def from_quad(cls, quad: Iterable[Sequence[float]], text: str, score: float) -> TextLine:
        """Build a line from the four (x, y) corners a text detector returns."""
        points = [(float(x), float(y)) for x, y in quad]
        xs = [x for x, _ in points]
        ys = [y for _, y in points]
        return cls((min(xs), min(ys), max(xs), max(ys)), text, score)

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    @property
    def center_y(self) -> float:
        return (self.box[1] + self.box[3]) / 2


@dataclass(frozen=True)
class TextBlock:
    """A paragraph, list item or heading in reading order, with the union box of its lines."""

    kind: BlockKind
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in page pixels
    text: str
    level: int = 0  # 1 or 2 for headings, 0 otherwise


@dataclass(frozen=True)
class _Thresholds:
    body_height: float
    heading_height: float
    top_heading_height: float

    def scaled(self, heights: float) -> float:
        return heights * self.body_height


def order_lines(lines: Sequence[TextLine]) -> list[TextBlock]:
    """Return the blocks of a page in reading order (see the module docstring for the rules)."""
    lines = [line for line in lines if line.text.strip() and line.height > 0]
    if not lines:
        return []

    thresholds = _measure(lines)
    lines = _join_split_titles(lines, thresholds)
    blocks: list[TextBlock] = []
    for leaf in _xy_cut(lines, thresholds):
        blocks.extend(_leaf_blocks(leaf, thresholds))
    return blocks


def render_markdown(blocks: Sequence[TextBlock]) -> str:
    """Render blocks as markdown: `#`/`##` headings, `- ` list items, blank lines between blocks."""
    parts: list[str] = []
    for block in blocks:
        if block.kind == "heading":
            parts.append(f"{'#' * block.level} {block.text}")
        elif block.kind == "list_item":
            parts.append(f"- {block.text}")
        else:
            parts.append(block.text)
    return "\n\n".join(parts)


def join_line_texts(texts: Sequence[str]) -> str:
    """Join the lines of one paragraph with spaces, rejoining words hyphenated at a line end.

    The hyphen is dropped only where it follows a letter and the next line starts with a lower-case
    letter ("ex-" + "plain"). Other hyphens after a letter or digit stay, with no space added
    ("Jean-" + "Luc", "1990-" + "1995"). A double hyphen or a dash is followed by a space.
    """
    joined = ""
    for text in (text.strip() for text in texts):
        if not text:
            continue
        if not joined:
            joined = text
        elif _ends_with_soft_hyphen(joined) and text[0].islower():
            joined = joined[:-1] + text
        elif joined.endswith("-") and len(joined) > 1 and joined[-2].isalnum():
            joined += text
        else:
            joined += " " + text
    return joined


def _ends_with_soft_hyphen(text: str) -> bool:
    return len(text) > 1 and text.endswith("-") and text[-2].isalpha()


def _measure(lines: Sequence[TextLine]) -> _Thresholds:
    body_height = statistics.median(line.height for line in lines)
    return _Thresholds(
        body_height, body_height * _HEADING_HEIGHTS, body_height * _TOP_HEADING_HEIGHTS
    )


def _join_split_titles(lines: list[TextLine], thresholds: _Thresholds) -> list[TextLine]:
    """Merge tall lines that sit side by side on one row, left to right, into one line."""
    tall = sorted(
        (line for line in lines if line.height >= thresholds.heading_height),
        key=lambda line: line.box[0],
    )
    if len(tall) < 2:
        return lines

    merged: list[TextLine] = []
    for line in tall:
        previous = merged[-1] if merged else None
        if previous is not None and _continues_title(previous, line):
            box = _union_box([previous.box, line.box])
            merged[-1] = TextLine(
                box, f"{previous.text} {line.text}", min(previous.score, line.score)
            )
        else:
            merged.append(line)
    short = [line for line in lines if line.height < thresholds.heading_height]
    return short + merged


def _continues_title(left: TextLine, right: TextLine) -> bool:
    overlap = min(left.box[3], right.box[3]) - max(left.box[1], right.box[1])
    smaller = min(left.height, right.height)
    gap = right.box[0] - left.box[2]
    return overlap >= smaller / 2 and gap <= _TITLE_JOIN_GAP_HEIGHTS * smaller


def _xy_cut(lines: list[TextLine], thresholds: _Thresholds) -> list[list[TextLine]]:
    """Split lines into leaves in reading order: columns left to right, sections top to bottom."""
    if len(lines) <= 1:
        return [lines]

    columns = _split_columns(lines, thresholds)
    sections = _split_sections(lines, thresholds)
    solid_columns = len(columns) > 1 and min(len(column) for column in columns) > 1
    if solid_columns or (len(columns) > 1 and len(sections) == 1):
        return [leaf for column in columns for leaf in _xy_cut(column, thresholds)]
    if len(sections) > 1:
        return [leaf for section in sections for leaf in _xy_cut(section, thresholds)]
    return [lines]


def _split_columns(lines: list[TextLine], thresholds: _Thresholds) -> list[list[TextLine]]:
    """Split lines into columns, left to right, at the gutters `_find_gutters` accepts."""
    gutters = _find_gutters(lines, thresholds)
    if not gutters:
        return [lines]

    columns: list[list[TextLine]] = [[] for _ in range(len(gutters) + 1)]
    for line in lines:
        center_x = (line.box[0] + line.box[2]) / 2
        index = sum(1 for start, end in gutters if center_x > (start + end) / 2)
        columns[index].append(line)
    return [column for column in columns if column]


def _find_gutters(lines: list[TextLine], thresholds: _Thresholds) -> list[tuple[float, float]]:
    """Return the x ranges that separate columns over the full height of `lines`.

    A gutter is an x range at least the minimum gutter wide with lines on both sides. In a node of
    6 or more lines, one line (or one in 20, if more) may cross it, so a detector box that strays
    a little over a gutter does not merge two columns. A crossing line may reach at most one body
    height past the gutter, so a heading that spans both columns still blocks the split.
    """
    tolerance = len(lines) // _GUTTER_CROSSINGS_PER_LINE
    if len(lines) >= _MIN_LINES_FOR_CROSSING:
        tolerance = max(1, tolerance)
    min_width = thresholds.scaled(_MIN_GUTTER_HEIGHTS)
    max_overhang = thresholds.scaled(_MAX_GUTTER_OVERHANG_HEIGHTS)
    left_edge = min(line.box[0] for line in lines)
    right_edge = max(line.box[2] for line in lines)

    gutters: list[tuple[float, float]] = []
    for start, end in _sparse_ranges(lines, tolerance):
        if end - start < min_width or start <= left_edge or end >= right_edge:
            continue
        crossing = [line for line in lines if line.box[0] < end and line.box[2] > start]
        if all(_overhang(line, start, end) <= max_overhang for line in crossing):
            gutters.append((start, end))
    return gutters


def _sparse_ranges(lines: list[TextLine], tolerance: int) -> list[tuple[float, float]]:
    """Return the maximal x ranges covered by at most `tolerance` line boxes."""
    events = sorted(
        [(line.box[0], 1) for line in lines] + [(line.box[2], -1) for line in lines],
        key=lambda event: (event[0], event[1]),
    )
    ranges: list[tuple[float, float]] = []
    coverage = 0
    sparse_from: float | None = None
    for x, step in events:
        coverage += step
        if coverage <= tolerance and sparse_from is None:
            sparse_from = x
        elif coverage > tolerance and sparse_from is not None:
            if x > sparse_from:
                ranges.append((sparse_from, x))
            sparse_from = None
    return ranges


def _overhang(line: TextLine, start: float, end: float) -> float:
    """Return how far a line crossing the gutter [start, end] reaches past its far side."""
    center_x = (line.box[0] + line.box[2]) / 2
    if center_x < (start + end) / 2:
        return line.box[2] - end
    return start - line.box[0]


def _has_gutter(lines: list[TextLine], thresholds: _Thresholds) -> bool:
    return bool(_find_gutters(lines, thresholds))


def _split_sections(lines: list[TextLine], thresholds: _Thresholds) -> list[list[TextLine]]:
    """Split into bands at horizontal gaps, then merge close bands of the same column structure.

    A band joins the section above it when they are close and either share a column gutter or
    neither has one; a band with columns under a single-column section, or the reverse, starts a
    new section.
    """
    ordered = sorted(lines, key=lambda line: line.box[1])
    bands: list[list[TextLine]] = [[ordered[0]]]
    bottom = ordered[0].box[3]
    for line in ordered[1:]:
        if line.box[1] > bottom:
            bands.append([line])
        else:
            bands[-1].append(line)
        bottom = max(bottom, line.box[3])

    max_gap = thresholds.scaled(_MAX_BAND_MERGE_GAP_HEIGHTS)
    sections = [bands[0]]
    for band in bands[1:]:
        section = sections[-1]
        gap = min(line.box[1] for line in band) - max(line.box[3] for line in section)
        if gap > max_gap:
            sections.append(band)
        elif _has_gutter(section + band, thresholds) or not (
            _has_gutter(section, thresholds) or _has_gutter(band, thresholds)
        ):
            section.extend(band)
        else:
            sections.append(band)
    return sections


def _leaf_blocks(lines: list[TextLine], thresholds: _Thresholds) -> list[TextBlock]:
    """Group one leaf's lines into rows, then into headings, list items and paragraphs."""
    rows = _group_rows(lines)
    left = min(line.box[0] for line in lines)
    right = max(line.box[2] for line in lines)

    blocks: list[TextBlock] = []
    current: list[list[TextLine]] = []
    current_kind: BlockKind = "paragraph"
    for row in rows:
        kind = _row_kind(row, thresholds)
        if current and _starts_block(current, current_kind, row, kind, left, right, thresholds):
            blocks.append(_make_block(current, current_kind, thresholds))
            current = []
        if not current:
            current_kind = kind
        current.append(row)
    if current:
        blocks.append(_make_block(current, current_kind, thresholds))
    return blocks


def _group_rows(lines: list[TextLine]) -> list[list[TextLine]]:
    """Group lines whose vertical centres lie within half a line height; rows run top to bottom."""
    rows: list[list[TextLine]] = []
    for line in sorted(lines, key=lambda line: line.center_y):
        if rows:
            row = rows[-1]
            row_center = statistics.fmean(member.center_y for member in row)
            row_height = min(member.height for member in row)
            if abs(line.center_y - row_center) <= min(row_height, line.height) / 2:
                row.append(line)
                continue
        rows.append([line])
    return [sorted(row, key=lambda line: line.box[0]) for row in rows]


def _row_kind(row: list[TextLine], thresholds: _Thresholds) -> BlockKind:
    if max(line.height for line in row) >= thresholds.heading_height:
        return "heading"
    first = row[0].text.lstrip()
    if first[0] in _BULLET_GLYPHS or first[:2] in {f"{mark} " for mark in _BULLET_MARKS}:
        return "list_item"
    return "paragraph"


def _starts_block(
    current: list[list[TextLine]],
    current_kind: BlockKind,
    row: list[TextLine],
    kind: BlockKind,
    left: float,
    right: float,
    thresholds: _Thresholds,
) -> bool:
    """Return whether `row` opens a new block after the rows gathered in `current`."""
    previous = current[-1]
    if kind == "list_item" or (kind == "heading") != (current_kind == "heading"):
        return True

    gap = min(line.box[1] for line in row) - max(line.box[3] for line in previous)
    if gap > thresholds.scaled(_PARAGRAPH_GAP_HEIGHTS):
        return True
    if kind == "heading":
        return False

    # A list item runs on over its indented continuation rows.
    if current_kind == "list_item":
        return False
    previous_end = max(line.box[2] for line in previous)
    if right - previous_end <= thresholds.scaled(_SHORT_LINE_HEIGHTS):
        return False

    # After a short row, an indent or a finished sentence followed by a capital opens a paragraph.
    indented = row[0].box[0] - left > thresholds.scaled(_INDENT_HEIGHTS)
    sentence_ended = previous[-1].text.rstrip().endswith(_SENTENCE_ENDS)
    return indented or (sentence_ended and row[0].text.lstrip()[:1].isupper())


def _make_block(rows: list[list[TextLine]], kind: BlockKind, thresholds: _Thresholds) -> TextBlock:
    lines = [line for row in rows for line in row]
    texts = [" ".join(line.text.strip() for line in row) for row in rows]
    text = join_line_texts(texts)
    level = 0
    if kind == "list_item":
        text = text.lstrip(_BULLET_GLYPHS + _BULLET_MARKS).lstrip()
    if kind == "heading":
        tallest = max(line.height for line in lines)
        level = 1 if tallest >= thresholds.top_heading_height else 2
    x1, y1, x2, y2 = _union_box([line.box for line in lines])
    return TextBlock(kind, (round(x1), round(y1), round(x2), round(y2)), text, level)


def _union_box(
    boxes: Sequence[tuple[float, float, float, float]],
) -> tuple[float, float, float, float]:
    return (
        min(box[0] for box in boxes),
        min(box[1] for box in boxes),
        max(box[2] for box in boxes),
        max(box[3] for box in boxes),
    )

"""models.reading_order on synthetic line layouts: columns, spanning titles, headings, hyphens."""

from __future__ import annotations

from models.reading_order import (
    TextBlock,
    TextLine,
    join_line_texts,
    order_lines,
    render_markdown,
)

LINE_HEIGHT_PX = 40
LINE_PITCH_PX = 48


def make_line(
    x1: float, y1: float, x2: float, text: str, height: float = LINE_HEIGHT_PX
) -> TextLine:
    return TextLine((x1, y1, x2, y1 + height), text)


def make_column(x1: float, x2: float, top: float, texts: list[str]) -> list[TextLine]:
    """Lines of one column, one per text, LINE_PITCH_PX apart."""
    return [make_line(x1, top + row * LINE_PITCH_PX, x2, text) for row, text in enumerate(texts)]


def texts_in_order(blocks: list[TextBlock]) -> str:
    return " ".join(block.text for block in blocks)


def two_columns(top: float, rows: int) -> tuple[list[TextLine], list[TextLine]]:
    left = make_column(100, 700, top, [f"left{row}" for row in range(rows)])
    right = make_column(730, 1330, top, [f"right{row}" for row in range(rows)])
    return left, right


def test_two_columns_read_column_by_column() -> None:
    left, right = two_columns(top=100, rows=6)
    # Interleave the lines as a detector sorted by y would return them.
    lines = [line for pair in zip(left, right, strict=True) for line in pair]

    text = texts_in_order(order_lines(lines))

    assert text.index("left5") < text.index("right0")
    assert text.split() == [f"left{row}" for row in range(6)] + [f"right{row}" for row in range(6)]


def test_spanning_title_comes_before_both_columns() -> None:
    title = make_line(300, 20, 1100, "Spanning Title", height=100)
    left, right = two_columns(top=160, rows=5)

    blocks = order_lines([*right, title, *left])

    assert blocks[0].kind == "heading"
    assert blocks[0].text == "Spanning Title"
    assert texts_in_order(blocks[1:]).split()[:5] == [f"left{row}" for row in range(5)]


def test_title_split_at_gutter_is_one_heading() -> None:
    """A title whose words the detector boxed apart on either side of the gutter stays whole."""
    title_left = make_line(400, 20, 690, "What Kids", height=100)
    title_right = make_line(760, 20, 1200, "Need Most", height=100)
    left, right = two_columns(top=160, rows=5)

    blocks = order_lines([*left, *right, title_right, title_left])

    assert blocks[0].kind == "heading"
    assert blocks[0].text == "What Kids Need Most"
    assert texts_in_order(blocks).index("left4") < texts_in_order(blocks).index("right0")


def test_full_width_paragraph_after_columns_comes_last() -> None:
    left, right = two_columns(top=100, rows=4)
    footer = make_line(100, 100 + 4 * LINE_PITCH_PX + 10, 1330, "full width footer")

    text = texts_in_order(order_lines([footer, *right, *left]))

    assert text.endswith("full width footer")
    assert text.index("left3") < text.index("right0")


def test_coincident_paragraph_breaks_keep_columns_whole() -> None:
    """Both columns pausing at the same height must not cut the page into rows."""
    title = make_line(300, 0, 1100, "Spanning Title", height=80)
    left_top, right_top = two_columns(top=100, rows=4)
    left_bottom, right_bottom = two_columns(top=100 + 4 * LINE_PITCH_PX + 30, rows=4)
    left_bottom = [
        TextLine(line.box, line.text.replace("left", "lower_left")) for line in left_bottom
    ]

    lines = [title, *left_top, *right_top, *left_bottom, *right_bottom]

    text = texts_in_order(order_lines(lines))

    assert text.index("lower_left3") < text.index("right0")


def test_stray_box_over_gutter_keeps_columns() -> None:
    """One detector box reaching a little into the gutter must not merge two long columns."""
    left, right = two_columns(top=100, rows=12)
    stray = right[-1]
    right[-1] = TextLine((stray.box[0] - 45, *stray.box[1:]), stray.text)

    text = texts_in_order(order_lines([*left, *right]))

    assert text.index("left11") < text.index("right0")


def test_heading_levels_follow_line_height() -> None:
    lines = [
        make_line(100, 0, 900, "Page Title", height=2.5 * LINE_HEIGHT_PX),
        make_line(100, 150, 900, "body one"),
        make_line(100, 198, 900, "body two"),
        make_line(100, 300, 600, "Section", height=1.7 * LINE_HEIGHT_PX),
        make_line(100, 400, 900, "body three"),
        make_line(100, 448, 900, "body four"),
    ]

    markdown = render_markdown(order_lines(lines))

    assert markdown.startswith("# Page Title\n\n")
    assert "\n\n## Section\n\n" in markdown


def test_paragraphs_split_at_vertical_gap() -> None:
    lines = [
        *make_column(100, 900, 0, ["first paragraph line", "still first"]),
        *make_column(100, 900, 2 * LINE_PITCH_PX + 30, ["second paragraph"]),
    ]

    markdown = render_markdown(order_lines(lines))

    assert markdown == "first paragraph line still first\n\nsecond paragraph"


def test_indent_after_short_line_starts_paragraph() -> None:
    lines = [
        make_line(100, 0, 900, "a full line of text"),
        make_line(100, 48, 400, "short end."),
        make_line(160, 96, 900, "Indented start"),
    ]

    blocks = order_lines(lines)

    assert [block.text for block in blocks] == ["a full line of text short end.", "Indented start"]


def test_bullets_become_list_items() -> None:
    lines = [
        make_line(100, 0, 900, "• first item runs"),
        make_line(140, 48, 600, "onto a second row"),
        make_line(100, 96, 900, "• second item"),
    ]

    markdown = render_markdown(order_lines(lines))

    assert markdown == "- first item runs onto a second row\n\n- second item"


def test_hyphenated_line_end_is_joined() -> None:
    lines = make_column(100, 900, 0, ["How could she ex-", "plain it"])

    assert order_lines(lines)[0].text == "How could she explain it"


def test_join_keeps_hyphen_before_capital_or_digit() -> None:
    assert join_line_texts(["Jean-", "Luc"]) == "Jean-Luc"
    assert join_line_texts(["pages 1990-", "1995"]) == "pages 1990-1995"
    assert join_line_texts(["tradi--", "tional"]) == "tradi-- tional"
    assert join_line_texts(["no hyphen", "here"]) == "no hyphen here"


def test_block_box_is_union_of_its_lines() -> None:
    lines = make_column(100, 900, 0, ["one", "two"])
    lines.append(make_line(100, 96, 950, "three"))

    (block,) = order_lines(lines)

    assert block.box == (100, 0, 950, 96 + LINE_HEIGHT_PX)


def test_empty_and_blank_lines_give_no_blocks() -> None:
    assert order_lines([]) == []
    assert order_lines([make_line(0, 0, 100, "   ")]) == []


def test_from_quad_takes_bounding_box() -> None:
    line = TextLine.from_quad([(10, 5), (110, 7), (109, 40), (9, 38)], "text", 0.9)

    assert line.box == (9.0, 5.0, 110.0, 40.0)
    assert line.score == 0.9


def test_sparse_labels_read_row_by_row() -> None:
    """Single labels around a centre are rows, not one-line columns."""
    lines = [
        make_line(800, 50, 1000, "top"),
        make_line(50, 500, 250, "left"),
        make_line(850, 500, 950, "3"),
        make_line(1550, 500, 1750, "right"),
        make_line(750, 950, 1050, "bottom"),
    ]

    text = texts_in_order(order_lines(lines))

    assert text == "top left 3 right bottom"


def test_dash_needs_space_to_mark_item() -> None:
    lines = [
        make_line(100, 0, 900, "- dash item"),
        make_line(100, 100, 900, "-5 degrees outside"),
    ]

    kinds = [block.kind for block in order_lines(lines)]

    assert kinds == ["list_item", "paragraph"]


def test_short_sentence_end_starts_paragraph() -> None:
    lines = [
        make_line(100, 0, 900, "a full line of text that"),
        make_line(100, 48, 400, "ends here."),
        make_line(100, 96, 900, "Next paragraph starts"),
        make_line(100, 144, 500, "and ends here."),
    ]

    blocks = order_lines(lines)

    assert [block.text for block in blocks] == [
        "a full line of text that ends here.",
        "Next paragraph starts and ends here.",
    ]

"""Grounding post-processing: tag parsing, pixel boxes, figure crops and markdown cleanup."""

from __future__ import annotations

from PIL import Image, ImageDraw

from models.deepseek_ocr.grounding import (
    EOS_TEXT,
    clean_text,
    parse_boxes,
    parse_int_lists,
    postprocess_output,
    to_pixel_box,
)

PAGE_WIDTH, PAGE_HEIGHT = 1190, 1684  # A4 rendered at 144 dpi

DOCUMENT = (
    "<|ref|>title<|/ref|><|det|>[[120, 45, 880, 90]]<|/det|>\n"
    "# Annual Report 2024\n\n"
    "<|ref|>text<|/ref|><|det|>[[120, 110, 880, 300]]<|/det|>\n"
    "Revenue grew by 12% while costs fell.\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 320, 500, 600], [520, 320, 900, 600]]<|/det|>\n\n"
    "<|ref|>image_caption<|/ref|><|det|>[[100, 610, 900, 640]]<|/det|>\n"
    "<center>Figure 1: Sales by region</center>\n\n"
    "<|ref|>table<|/ref|><|det|>[[100, 660, 900, 950]]<|/det|>\n"
    "<table><tr><td>A</td><td>B</td></tr></table>\n\n\n\n"
    "<|ref|>equation<|/ref|><|det|>[[0, 960, 999, 999]]<|/det|>\n"
    "\\[ f \\coloneqq g \\eqqcolon h \\]" + EOS_TEXT + "\n"
)


def grid_to_pixels(
    box: list[int], width: int = PAGE_WIDTH, height: int = PAGE_HEIGHT
) -> tuple[int, ...]:
    """The reference conversion: int(x / 999 * W), int(y / 999 * H)."""
    x1, y1, x2, y2 = box
    return (
        int(x1 / 999 * width),
        int(y1 / 999 * height),
        int(x2 / 999 * width),
        int(y2 / 999 * height),
    )


def make_page(width: int = PAGE_WIDTH, height: int = PAGE_HEIGHT) -> Image.Image:
    """A white page with a red rectangle inside the first figure box of DOCUMENT."""
    page = Image.new("RGB", (width, height), "white")
    x1, y1, x2, y2 = grid_to_pixels([100, 320, 500, 600], width, height)
    ImageDraw.Draw(page).rectangle((x1, y1, x2 - 1, y2 - 1), fill=(255, 0, 0))
    return page


def test_blocks_carry_labels_pixel_boxes_and_text() -> None:
    _, blocks, _ = postprocess_output(DOCUMENT, make_page(), page_index=0)

    assert [block.label for block in blocks] == [
        "title",
        "text",
        "image",
        "image",
        "image_caption",
        "table",
        "equation",
    ]
    assert blocks[0].bbox == grid_to_pixels([120, 45, 880, 90])
    assert blocks[3].bbox == grid_to_pixels([520, 320, 900, 600])
    assert blocks[6].bbox == grid_to_pixels([0, 960, 999, 999])
    assert blocks[0].text == "# Annual Report 2024"
    assert blocks[1].text == "Revenue grew by 12% while costs fell."
    assert blocks[5].text == "<table><tr><td>A</td><td>B</td></tr></table>"
    assert blocks[6].text == "\\[ f := g =: h \\]"


def test_two_box_figure_links_and_crops() -> None:
    markdown, _, figures = postprocess_output(DOCUMENT, make_page(), page_index=4)

    assert [figure.name for figure in figures] == ["4_0.jpg", "4_1.jpg"]
    assert "![](figures/4_0.jpg)\n![](figures/4_1.jpg)" in markdown
    for figure, box in zip(figures, ([100, 320, 500, 600], [520, 320, 900, 600]), strict=True):
        x1, y1, x2, y2 = grid_to_pixels(box)
        assert figure.bbox == (x1, y1, x2, y2)
        assert figure.image.size == (x2 - x1, y2 - y1)
        assert figure.image.mode == "RGB"
    assert figures[0].image.getpixel((5, 5)) == (255, 0, 0)
    assert figures[1].image.getpixel((5, 5)) == (255, 255, 255)


def test_figures_are_numbered_by_box_across_refs() -> None:
    text = (
        "<|ref|>image<|/ref|><|det|>[[0, 0, 100, 100], [200, 0, 300, 100]]<|/det|>\n"
        "between\n"
        "<|ref|>image<|/ref|><|det|>[[400, 400, 500, 500]]<|/det|>\n"
    )
    markdown, _, figures = postprocess_output(text, make_page(), page_index=1)

    assert [figure.name for figure in figures] == ["1_0.jpg", "1_1.jpg", "1_2.jpg"]
    assert markdown == (
        "![](figures/1_0.jpg)\n![](figures/1_1.jpg)\n\nbetween\n![](figures/1_2.jpg)"
    )


def test_other_tags_removed_and_text_between_kept() -> None:
    markdown, _, _ = postprocess_output(DOCUMENT, make_page(), page_index=0)

    assert "<|" not in markdown
    assert "[[" not in markdown
    assert markdown.startswith("# Annual Report 2024\n\nRevenue grew by 12% while costs fell.")
    assert "<center>Figure 1: Sales by region</center>" in markdown
    assert "<table><tr><td>A</td><td>B</td></tr></table>\n\n\\[" in markdown


def test_markdown_replaces_colon_equals_and_strips_eos() -> None:
    markdown, _, _ = postprocess_output(DOCUMENT, make_page(), page_index=0)
    assert markdown.endswith("\\[ f := g =: h \\]")
    assert "coloneqq" not in markdown
    assert "eqqcolon" not in markdown


def test_clean_text_collapses_three_or_more_newlines() -> None:
    assert clean_text("a\n\n\nb\n\n\n\n\nc\n\nd\ne") == "a\n\nb\n\nc\n\nd\ne"


def test_grid_edges_map_to_page_edges() -> None:
    assert to_pixel_box([0, 0, 999, 999], 1190, 1684) == (0, 0, 1190, 1684)
    assert to_pixel_box([500, 500, 500, 500], 1000, 2000) == (500, 1001, 500, 1001)


def test_bad_boxes_clamped_and_ordered() -> None:
    assert to_pixel_box([-50, 1200, 2000, -3], 640, 480) == (0, 0, 640, 480)
    assert to_pixel_box([900, 800, 100, 200], 999, 999) == (100, 200, 900, 800)


def test_full_page_figure_crop_is_whole_page() -> None:
    text = "<|ref|>image<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>"
    markdown, blocks, figures = postprocess_output(text, make_page(800, 600), page_index=0)
    assert markdown == "![](figures/0_0.jpg)"
    assert blocks[0].bbox == (0, 0, 800, 600)
    assert figures[0].image.size == (800, 600)


def test_empty_figure_box_not_cropped() -> None:
    text = "<|ref|>image<|/ref|><|det|>[[300, 100, 300, 400]]<|/det|>\nafter"
    markdown, blocks, figures = postprocess_output(text, make_page(), page_index=0)
    assert figures == []
    assert markdown == "after"
    assert len(blocks) == 1


def test_malformed_payloads_are_kept_as_text() -> None:
    malformed = [
        "[[1, 2, 3]]",
        "[[1, 2, 3, 4]",
        "[[1+1, 2, 3, 4]]",
        "__import__('os').system('true')",
        "[[1, 2, 3, 4],]",
        "",
    ]
    for payload in malformed:
        group = f"<|ref|>text<|/ref|><|det|>{payload}<|/det|>"
        text = f"before\n{group}\nafter"
        markdown, blocks, figures = postprocess_output(text, make_page(), page_index=0)
        assert markdown == text, payload
        assert blocks == [], payload
        assert figures == [], payload


def test_malformed_group_does_not_hide_the_next_group() -> None:
    text = (
        "<|ref|>text<|/ref|><|det|>[[1, 2]]<|/det|>\nfirst\n"
        "<|ref|>title<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nsecond"
    )
    markdown, blocks, _ = postprocess_output(text, make_page(100, 100), page_index=0)
    assert [(block.label, block.bbox, block.text) for block in blocks] == [
        ("title", (0, 0, 100, 100), "second")
    ]
    assert markdown == "<|ref|>text<|/ref|><|det|>[[1, 2]]<|/det|>\nfirst\n\nsecond"


def test_stray_ref_keeps_later_group() -> None:
    text = "<|ref|>a<|/ref|> loose\n<|ref|>title<|/ref|><|det|>[[0, 0, 999, 999]]<|/det|>\nHead"
    markdown, blocks, _ = postprocess_output(text, make_page(100, 100), page_index=0)
    assert [block.label for block in blocks] == ["title"]
    assert markdown == "<|ref|>a<|/ref|> loose\n\nHead"


def test_parse_boxes_accepts_lists_and_single_box() -> None:
    assert parse_boxes("[[1, 2, 3, 4], [5, 6, 7, 8]]") == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert parse_boxes(" [ [0,0,999,999] ] ") == [[0, 0, 999, 999]]
    assert parse_boxes("[10, 20, 30, 40]") == [[10, 20, 30, 40]]
    assert parse_boxes("[[-5, 2, 3, 4]]") == [[-5, 2, 3, 4]]


def test_parse_boxes_rejects_wrong_shapes() -> None:
    for payload in (
        "[]",
        "[[]]",
        "[[1, 2, 3, 4, 5]]",
        "[[1, 2, 3, 4], 5]",
        "[[[1, 2, 3, 4]]]",
        "7",
    ):
        assert parse_boxes(payload) is None, payload


def test_parse_int_lists_rejects_abuse() -> None:
    assert parse_int_lists("[" * 100_000 + "]" * 100_000) is None
    assert parse_int_lists("[" + "9" * 5000 + "]") is None
    assert parse_int_lists("[[1, 2], [3]]") == [[1, 2], [3]]
    assert parse_int_lists("[1, 2] [3]") is None

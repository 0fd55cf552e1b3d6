"""Tests for worker.rasterize: documents to upright 8-bit RGB pages, over the shared corpus."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image, PngImagePlugin

from core.documents import Limits, inspect_document
from core.errors import InputError
from worker.rasterize import RasterPage, iter_pages, render_page, to_rgb

# Same location as tests/conftest.py: OCRQ_CORPUS_DIR, else shared/corpus beside the checkout.
CORPUS = Path(
    os.environ.get("OCRQ_CORPUS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "corpus"
)
MANIFEST = CORPUS / "manifest.json"
pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="the shared corpus is not present")


def make_limits(**overrides: int) -> Limits:
    values = {
        "max_file_bytes": 10_000_000,
        "max_pages": 50,
        "max_page_pixels": 12_000_000,
        "pdf_render_dpi": 144,
    }
    values.update(overrides)
    return Limits(**values)


def readable_corpus_files() -> list[str]:
    """Return the corpus files the manifest expects to open without a password."""
    if not MANIFEST.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(MANIFEST.read_text())["files"]
    return [
        entry["file"]
        for entry in entries
        if "open_error" not in entry["properties"] and not entry["properties"].get("encrypted")
    ]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


def raster_error(path: Path, limits: Limits, password: str | None = None) -> InputError:
    with pytest.raises(InputError) as caught:
        list(iter_pages(path, limits, password))
    return caught.value


def write_image(tmp_path: Path, image: Image.Image, format: str, **params: Any) -> Path:
    path = tmp_path / f"page.{format.lower()}"
    image.save(path, format=format, **params)
    return path


def make_png_header(width: int, height: int) -> bytes:
    """Build a PNG that declares width x height greyscale pixels but carries one byte of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return (
        signature
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def make_rotated_pdf(rotation: int) -> bytes:
    """Build a 200x100 pt PDF page with a black square in its bottom-left corner."""
    document = pdfium.PdfDocument.new()
    page = document.new_page(200, 100)
    square = pdfium.PdfObject(pdfium.raw.FPDFPageObj_CreateNewRect(0, 0, 50, 50))
    pdfium.raw.FPDFPageObj_SetFillColor(square, 0, 0, 0, 255)
    pdfium.raw.FPDFPath_SetDrawMode(square, pdfium.raw.FPDF_FILLMODE_ALTERNATE, False)
    page.insert_obj(square)
    page.gen_content()
    page.set_rotation(rotation)
    page.close()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


@pytest.mark.parametrize("name", readable_corpus_files())
def test_iter_pages_matches_inspect_document(name: str) -> None:
    """Every readable corpus file yields its pages in order, as RGB, at the inspected sizes."""
    limits = make_limits()
    info = inspect_document(CORPUS / name, limits)

    pages = list(iter_pages(CORPUS / name, limits))

    assert [page.index for page in pages] == list(range(info.page_count))
    assert [page.image.mode for page in pages] == ["RGB"] * info.page_count
    assert tuple(page.image.size for page in pages) == info.page_sizes_px


def test_iter_pages_multipage_pdf_in_order() -> None:
    """multipage.pdf has six pages whose shapes identify them, so their order is checked."""
    limits = make_limits()
    document = pdfium.PdfDocument(str(CORPUS / "multipage.pdf"))
    aspect_ratios = []
    for page_index in range(len(document)):
        width_pt, height_pt = document.get_page_size(page_index)
        aspect_ratios.append(width_pt / height_pt)
    document.close()

    pages = list(iter_pages(CORPUS / "multipage.pdf", limits))

    assert len(pages) == 6
    for page, aspect_ratio in zip(pages, aspect_ratios, strict=True):
        width, height = page.image.size
        assert width / height == pytest.approx(aspect_ratio, rel=0.01)


@pytest.mark.parametrize("name", ["test-ocr-mixed.pdf", "multipage.tiff"])
def test_render_page_matches_iter_pages(name: str) -> None:
    limits = make_limits()
    pages = list(iter_pages(CORPUS / name, limits))

    for page in pages:
        single = render_page(CORPUS / name, page.index, limits)
        assert single.size == page.image.size
        assert np.array_equal(pixels(single), pixels(page.image))


def test_iter_pages_starts_at_start() -> None:
    limits = make_limits(max_page_pixels=6_000_000)

    indices = [page.index for page in iter_pages(CORPUS / "multipage.pdf", limits, start=3)]

    assert indices == [3, 4, 5]


def test_render_page_rejects_missing_page() -> None:
    with pytest.raises(IndexError):
        render_page(CORPUS / "multipage.pdf", 6, make_limits())
    with pytest.raises(IndexError):
        render_page(CORPUS / "test-ocr.png", 1, make_limits())


def test_iter_pages_renders_2400dpi_scan_readably() -> None:
    """At 144 dpi the 120x86 pt page would be 240x172 px, too small to read."""
    limits = make_limits(max_page_pixels=6_000_000)

    (page,) = iter_pages(CORPUS / "2400dpi.pdf", limits)

    width, height = page.image.size
    assert width > 2_000
    assert width * height <= limits.max_page_pixels
    assert width / height == pytest.approx(4_000 / 2_864, rel=0.01)


def test_iter_pages_2400dpi_scan_at_native_size() -> None:
    (page,) = iter_pages(CORPUS / "2400dpi.pdf", make_limits(max_page_pixels=20_000_000))

    width, height = page.image.size
    assert abs(width - 4_000) <= 1
    assert abs(height - 2_864) <= 1


def test_iter_pages_multipage_tiff_frames() -> None:
    pages = list(iter_pages(CORPUS / "multipage.tiff", make_limits()))

    assert [page.index for page in pages] == [0, 1, 2]
    with Image.open(CORPUS / "multipage.tiff") as tiff:
        for page in pages:
            tiff.seek(page.index)
            expected = tiff.convert("RGB")
            assert np.array_equal(pixels(page.image), pixels(expected))


def test_iter_pages_stops_tiff_at_max_pages() -> None:
    pages = iter_pages(CORPUS / "multipage.tiff", make_limits(max_pages=2))

    assert next(pages).index == 0
    assert next(pages).index == 1
    with pytest.raises(InputError) as caught:
        next(pages)
    assert caught.value.code == "too_many_pages"


def test_iter_pages_cmyk_pdf_not_inverted() -> None:
    """The ink in each labelled line of cmyk.pdf has that line's colour on a white page."""
    (page,) = iter_pages(CORPUS / "cmyk.pdf", make_limits())
    image = pixels(page.image)
    height = image.shape[0]

    def ink_colour(top: float, bottom: float) -> np.ndarray:
        band = image[int(top * height) : int(bottom * height)]
        ink = band[band.min(axis=1 if band.ndim == 2 else 2) < 200]
        assert len(ink) > 500
        return ink.mean(axis=0)

    assert image.mean() > 240
    black = ink_colour(0.09, 0.14)
    assert black.max() < 80
    magenta = ink_colour(0.31, 0.36)
    assert magenta[0] > 200
    assert magenta[1] < 80
    assert magenta[2] > 120
    cyan = ink_colour(0.415, 0.465)
    assert cyan[0] < 80
    assert cyan[2] > 200
    yellow_band = image[int(0.63 * height) : int(0.675 * height)]
    yellow = yellow_band[yellow_band.min(axis=2) < 200].mean(axis=0)
    assert yellow[0] > 200
    assert yellow[1] > 200
    assert yellow[2] < 80


def test_iter_pages_cmyk_jpeg_not_inverted(tmp_path: Path) -> None:
    """Full magenta and yellow with no black is red, and inverted it would come out cyan."""
    path = write_image(tmp_path, Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG")

    (page,) = iter_pages(path, make_limits())

    red, green, blue = pixels(page.image).reshape(-1, 3).mean(axis=0)
    assert red > 200
    assert green < 60
    assert blue < 60


def test_iter_pages_ccitt_pdf_mostly_white() -> None:
    (page,) = iter_pages(CORPUS / "ccitt.pdf", make_limits())
    grey = pixels(page.image.convert("L"))

    white_share = (grey > 200).mean()
    black_share = (grey < 60).mean()
    assert white_share > 0.8
    assert black_share > 0.01


def test_iter_pages_applies_exif_orientation() -> None:
    """Landscape_3.jpg is stored upside down with EXIF orientation 3."""
    (page,) = iter_pages(CORPUS / "Landscape_3.jpg", make_limits())

    with Image.open(CORPUS / "Landscape_3.jpg") as stored:
        upright = stored.convert("RGB").transpose(Image.Transpose.ROTATE_180)
    assert page.image.size == upright.size
    assert np.array_equal(pixels(page.image), pixels(upright))


def test_iter_pages_swaps_size_for_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed turned 90 degrees clockwise
    stored = Image.new("RGB", (60, 20), (255, 255, 255))
    stored.paste((0, 0, 0), (0, 0, 10, 20))  # a black bar at the stored left edge
    path = write_image(tmp_path, stored, "PNG", exif=exif.tobytes())

    (page,) = iter_pages(path, make_limits())

    assert page.image.size == (20, 60)
    assert np.array_equal(pixels(page.image), pixels(stored.transpose(Image.Transpose.ROTATE_270)))
    assert pixels(page.image)[:10].max() == 0  # the bar is now at the top


def test_iter_pages_rotates_tiff_frames_once(tmp_path: Path) -> None:
    """Pillow rotates TIFF frames itself, so the EXIF orientation must not be applied twice."""
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [Image.new("RGB", (30, 10), (0, 0, 0)) for _ in range(2)]
    for frame in frames:
        frame.paste((255, 255, 255), (0, 0, 5, 10))  # a white bar at the stored left edge
    path = tmp_path / "rotated.tif"
    frames[0].save(path, format="TIFF", save_all=True, append_images=frames[1:], exif=exif)
    limits = make_limits()

    info = inspect_document(path, limits)
    pages = list(iter_pages(path, limits))

    upright = pixels(frames[0].transpose(Image.Transpose.ROTATE_270))
    assert info.page_sizes_px == ((10, 30), (10, 30))
    assert [page.image.size for page in pages] == [(10, 30), (10, 30)]
    for page in pages:
        assert np.array_equal(pixels(page.image), upright)


def test_to_rgb_converts_lab_colours() -> None:
    """LAB white stays white and negative a, b (stored below 128) gives cyan, not garbage."""
    white = to_rgb(Image.new("LAB", (1, 1), (255, 128, 128))).getpixel((0, 0))
    cyan = to_rgb(Image.new("LAB", (1, 1), (255, 0, 0))).getpixel((0, 0))

    assert isinstance(white, tuple)
    assert min(white) > 245
    assert isinstance(cyan, tuple)
    assert cyan[0] < 60
    assert cyan[1] > 200
    assert cyan[2] > 200


def test_iter_pages_scales_16_bit_grey_png() -> None:
    """i_trns.png is 16-bit grey whose tRNS grey 255 turns white, and other values scale."""
    (page,) = iter_pages(CORPUS / "i_trns.png", make_limits())

    with Image.open(CORPUS / "i_trns.png") as stored:
        values = np.asarray(stored).astype(np.int64)
    expected = np.rint(values * 255 / 65535)
    expected[values == 255] = 255
    image = pixels(page.image)
    assert page.image.mode == "RGB"
    assert page.image.size == (64, 64)
    for channel in range(3):
        assert np.array_equal(image[..., channel], expected)


def test_to_rgb_scales_full_range_16_bit() -> None:
    """65535 maps to 255 and 32768 to 128, where clipping would give 255 for both."""
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    image = Image.frombytes("I;16", (4, 1), values.tobytes())

    rgb = pixels(to_rgb(image))

    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]


def test_iter_pages_flattens_palette_transparency() -> None:
    """p_trns_single.png marks palette index 164 transparent, which must come out white."""
    (page,) = iter_pages(CORPUS / "p_trns_single.png", make_limits())

    with Image.open(CORPUS / "p_trns_single.png") as stored:
        indices = np.asarray(stored)
        palette = np.array(stored.getpalette()).reshape(-1, 3)
    expected = palette[indices]
    expected[indices == 164] = 255
    assert page.image.mode == "RGB"
    assert np.array_equal(pixels(page.image), expected)


def test_iter_pages_flattens_alpha_on_white(tmp_path: Path) -> None:
    stored = Image.new("RGBA", (4, 1))
    stored.putdata([(0, 0, 0, 0), (0, 0, 0, 255), (0, 0, 0, 128), (200, 100, 0, 255)])
    path = write_image(tmp_path, stored, "PNG")

    (page,) = iter_pages(path, make_limits())

    assert pixels(page.image)[0].tolist() == [
        [255, 255, 255],
        [0, 0, 0],
        [127, 127, 127],
        [200, 100, 0],
    ]


def test_iter_pages_gif_first_frame_on_white(tmp_path: Path) -> None:
    """An animated GIF is one page, its first frame, with the transparent index made white."""
    first = Image.new("P", (8, 8), 1)
    first.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    first.paste(0, (0, 0, 4, 8))
    second = Image.new("P", (8, 8), 0)
    second.putpalette([0, 0, 0, 255, 0, 0] + [0, 0, 0] * 254)
    path = tmp_path / "animated.gif"
    first.save(path, save_all=True, append_images=[second], transparency=0, disposal=2)

    pages = list(iter_pages(path, make_limits()))

    assert len(pages) == 1
    image = pixels(pages[0].image)
    assert image[:, :4].min() == 255
    assert image[:, 4:].reshape(-1, 3).tolist() == [[255, 0, 0]] * 32


def test_iter_pages_maps_pillow_decode_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow re-checks TIFF frame sizes on decode, and its error becomes page_too_large."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)

    error = raster_error(CORPUS / "multipage.tiff", make_limits())

    assert error.code == "page_too_large"
    assert "OCRQ_MAX_PAGE_PIXELS" in error.message


def test_iter_pages_test_ocr_png_is_rgb() -> None:
    """test-ocr.png is RGBA but fully opaque, so flattening keeps its colours."""
    (page,) = iter_pages(CORPUS / "test-ocr.png", make_limits())

    with Image.open(CORPUS / "test-ocr.png") as stored:
        expected = stored.convert("RGB")
    assert page.image.mode == "RGB"
    assert np.array_equal(pixels(page.image), pixels(expected))


def test_iter_pages_honours_pdf_rotate(tmp_path: Path) -> None:
    """/Rotate 90 turns the 200x100 pt page clockwise, so the square moves to the top left."""
    path = tmp_path / "rotated.pdf"
    path.write_bytes(make_rotated_pdf(90))

    (page,) = iter_pages(path, make_limits(pdf_render_dpi=72))

    image = pixels(page.image.convert("L"))
    assert page.image.size == (100, 200)
    assert image[:50, :50].mean() < 10
    assert image[150:, :50].mean() > 245


def test_iter_pages_unrotated_pdf_square_bottom_left(tmp_path: Path) -> None:
    path = tmp_path / "plain.pdf"
    path.write_bytes(make_rotated_pdf(0))

    (page,) = iter_pages(path, make_limits(pdf_render_dpi=72))

    image = pixels(page.image.convert("L"))
    assert page.image.size == (200, 100)
    assert image[50:, :50].mean() < 10
    assert image[:50, :50].mean() > 245


def test_iter_pages_opens_encrypted_pdf_with_password() -> None:
    (page,) = iter_pages(CORPUS / "skew-encrypted.pdf", make_limits(), password="password")

    assert page.image.mode == "RGB"
    assert pixels(page.image.convert("L")).mean() > 200


def test_iter_pages_requires_pdf_password() -> None:
    assert (
        raster_error(CORPUS / "skew-encrypted.pdf", make_limits()).code == "pdf_password_required"
    )


def test_iter_pages_rejects_invalid_pdf() -> None:
    assert raster_error(CORPUS / "invalid.pdf", make_limits()).code == "unreadable_document"


def test_iter_pages_rejects_bomb_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_load(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail_load)
    path = tmp_path / "bomb.png"
    path.write_bytes(make_png_header(100_000, 100_000))

    error = raster_error(path, make_limits())

    assert error.code == "page_too_large"
    assert "OCRQ_MAX_PAGE_PIXELS" in error.message


def test_iter_pages_rejects_truncated_image(tmp_path: Path) -> None:
    data = (CORPUS / "linn.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])

    assert raster_error(path, make_limits()).code == "unreadable_document"


def test_iter_pages_reduces_oversized_jpeg(tmp_path: Path) -> None:
    stored = Image.new("RGB", (2_000, 1_000), (30, 120, 200))
    path = write_image(tmp_path, stored, "JPEG", quality=95)

    (page,) = iter_pages(path, make_limits(max_page_pixels=600_000))

    assert page.image.size == (1_000, 500)
    assert np.abs(pixels(page.image).reshape(-1, 3).mean(axis=0) - [30, 120, 200]).max() < 4


def test_iter_pages_reduces_oversized_pdf_page(tmp_path: Path) -> None:
    limits = make_limits(max_page_pixels=6_000_000)

    pages: list[RasterPage] = list(iter_pages(CORPUS / "multipage.pdf", limits, start=1))

    width, height = pages[0].image.size
    assert width * height <= limits.max_page_pixels
    assert width == height

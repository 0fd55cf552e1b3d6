"""Tests for core.documents: media type sniffing and input limits, over the shared corpus."""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import time
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image, PngImagePlugin

from core.documents import (
    ACCEPTED_MEDIA_TYPES,
    MIN_PDF_RENDER_DPI,
    SNIFF_BYTES,
    DocumentInfo,
    Limits,
    inspect_document,
    sniff_media_type,
)
from core.errors import InputError
from core.settings import Settings

# Same location as tests/conftest.py: OCRQ_CORPUS_DIR, else shared/corpus beside the checkout.
CORPUS = Path(
    os.environ.get("OCRQ_CORPUS_DIR") or Path(__file__).resolve().parents[3] / "shared" / "corpus"
)
MANIFEST = CORPUS / "manifest.json"
pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="the shared corpus is not present")

# Padding string of the PDF Standard security handler (ISO 32000-1, 7.6.3.3, algorithm 2).
_PDF_PASSWORD_PAD = bytes.fromhex(
    "28bf4e5e4e758a4164004e56fffa01082e2e00b6d0683e802f0ca9fe6453697a"
)


def make_limits(**overrides: int) -> Limits:
    values = {
        "max_file_bytes": 10_000_000,
        "max_pages": 50,
        "max_page_pixels": 12_000_000,
        "pdf_render_dpi": 144,
    }
    values.update(overrides)
    return Limits(**values)


def manifest_entries() -> list[dict[str, Any]]:
    if not MANIFEST.exists():
        return []
    entries: list[dict[str, Any]] = json.loads(MANIFEST.read_text())["files"]
    return entries


def expected_outcome(entry: dict[str, Any]) -> tuple[str, int] | str:
    """Return (media type, page count) the manifest implies, or the error code it expects."""
    properties = entry["properties"]
    if "open_error" in properties:
        return "unreadable_document"
    if properties.get("encrypted"):
        return "pdf_password_required"
    if "pages" in properties:
        return "application/pdf", properties["pages"]
    media_type = "image/" + properties["format"].lower()
    return media_type, properties["frames"]


def inspect_error(path: Path, limits: Limits, password: str | None = None) -> InputError:
    with pytest.raises(InputError) as caught:
        inspect_document(path, limits, password)
    return caught.value


def write_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def make_png_header(width: int, height: int) -> bytes:
    """Build a PNG that declares width x height greyscale pixels but carries one byte of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00")
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def image_bytes(image: Image.Image, format: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def make_pdf(page_sizes_pt: list[tuple[float, float]], rotation: int = 0) -> bytes:
    document = pdfium.PdfDocument.new()
    for width_pt, height_pt in page_sizes_pt:
        page = document.new_page(width_pt, height_pt)
        page.set_rotation(rotation)
        page.close()
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    output = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        output.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(output)


def make_empty_password_pdf(owner_password: bytes = b"owner") -> bytes:
    """Build a 200x200 pt PDF, RC4-40 encrypted (revision 2) with an empty user password.

    Its one content stream, encrypted, fills the bottom-left 100x100 pt square with black.
    """
    file_id = hashlib.md5(b"ocrq-test").digest()
    permissions = -4
    owner_key = hashlib.md5((owner_password + _PDF_PASSWORD_PAD)[:32]).digest()[:5]
    owner_entry = _rc4(owner_key, _PDF_PASSWORD_PAD)
    key_input = (
        _PDF_PASSWORD_PAD + owner_entry + permissions.to_bytes(4, "little", signed=True) + file_id
    )
    file_key = hashlib.md5(key_input).digest()[:5]
    user_entry = _rc4(file_key, _PDF_PASSWORD_PAD)

    stream_key = hashlib.md5(file_key + (4).to_bytes(3, "little") + b"\x00\x00").digest()[:10]
    stream = _rc4(stream_key, b"0 0 0 rg 0 0 100 100 re f")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%b\nendstream" % (len(stream), stream),
        b"<< /Filter /Standard /V 1 /R 2 /O <%b> /U <%b> /P %d >>"
        % (owner_entry.hex().encode(), user_entry.hex().encode(), permissions),
    ]

    body = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, content in enumerate(objects, start=1):
        offsets.append(len(body))
        body += b"%d 0 obj\n%b\nendobj\n" % (number, content)
    xref_offset = len(body)
    body += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        body += b"%010d 00000 n \n" % offset
    identifier = file_id.hex().encode()
    body += b"trailer\n<< /Size %d /Root 1 0 R /Encrypt 5 0 R /ID [<%b> <%b>] >>\n" % (
        len(objects) + 1,
        identifier,
        identifier,
    )
    body += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(body)


@pytest.mark.parametrize("entry", manifest_entries(), ids=lambda entry: entry["file"])
def test_inspect_document_matches_manifest(entry: dict[str, Any]) -> None:
    """Every corpus file gets the media type and page count, or the error, its entry implies."""
    expected = expected_outcome(entry)
    path = CORPUS / entry["file"]
    limits = make_limits()

    if isinstance(expected, str):
        assert inspect_error(path, limits).code == expected
        return
    info = inspect_document(path, limits)
    assert info.media_type == expected[0]
    assert info.page_count == expected[1]
    assert info.page_sizes_px is not None
    assert len(info.page_sizes_px) == expected[1]


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (b"%PDF-1.7\n", "application/pdf"),
        (b"\x00junk before the header %PDF-1.4\n", "application/pdf"),
        (b"II*\x00\x08\x00\x00\x00", "image/tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "image/tiff"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
        (b"GIF89a\x01\x00", "image/gif"),
    ],
)
def test_sniff_media_type_reads_magic_bytes(data: bytes, media_type: str) -> None:
    assert sniff_media_type(data) == media_type


@pytest.mark.parametrize(
    ("mode", "format", "media_type"),
    [
        ("RGB", "WEBP", "image/webp"),
        ("RGB", "BMP", "image/bmp"),
        ("P", "GIF", "image/gif"),
        ("RGB", "TIFF", "image/tiff"),
        ("RGB", "JPEG", "image/jpeg"),
    ],
)
def test_inspect_document_accepts_generated_image_formats(
    tmp_path: Path, mode: str, format: str, media_type: str
) -> None:
    path = write_file(tmp_path, "upload", image_bytes(Image.new(mode, (30, 20)), format))

    info = inspect_document(path, make_limits())

    assert info == DocumentInfo(media_type=media_type, page_count=1, page_sizes_px=((30, 20),))


def test_inspect_document_ignores_file_name(tmp_path: Path) -> None:
    pdf_named_png = write_file(tmp_path, "scan.png", (CORPUS / "ccitt.pdf").read_bytes())

    assert inspect_document(pdf_named_png, make_limits()).media_type == "application/pdf"


@pytest.mark.parametrize(
    "data",
    [
        b"plain text, not a document\n",
        b"BM but not a bitmap header, just text that starts with BM",
    ],
)
def test_sniff_media_type_rejects_unknown_content(data: bytes) -> None:
    with pytest.raises(InputError) as caught:
        sniff_media_type(data)

    assert caught.value.code == "unsupported_media_type"
    assert caught.value.http_status == 415
    for media_type in ACCEPTED_MEDIA_TYPES:
        assert media_type in caught.value.message


def test_inspect_document_rejects_zip_archive(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("page.pdf", (CORPUS / "invalid.pdf").read_bytes())
    path = write_file(tmp_path, "upload.pdf", buffer.getvalue())

    error = inspect_error(path, make_limits())

    assert error.code == "unsupported_media_type"
    assert error.http_status == 415


def test_sniff_media_type_needs_at_most_sniff_bytes() -> None:
    head = b"\x00" * (SNIFF_BYTES - 8) + b"%PDF-1.4"

    assert sniff_media_type(head) == "application/pdf"


def test_inspect_document_rejects_empty_file(tmp_path: Path) -> None:
    error = inspect_error(write_file(tmp_path, "empty.pdf", b""), make_limits())

    assert error.code == "unreadable_document"
    assert error.http_status == 422


def test_inspect_document_rejects_file_over_max_file_bytes(tmp_path: Path) -> None:
    path = write_file(tmp_path, "upload", (CORPUS / "p_trns_single.png").read_bytes())
    size_bytes = path.stat().st_size

    error = inspect_error(path, make_limits(max_file_bytes=size_bytes - 1))

    assert error.code == "file_too_large"
    assert error.http_status == 413
    assert "OCRQ_MAX_FILE_BYTES" in error.message
    assert str(size_bytes) in error.message
    assert str(size_bytes - 1) in error.message


def test_inspect_document_accepts_file_at_max_file_bytes(tmp_path: Path) -> None:
    path = write_file(tmp_path, "upload", (CORPUS / "p_trns_single.png").read_bytes())

    info = inspect_document(path, make_limits(max_file_bytes=path.stat().st_size))

    assert info.page_count == 1


def test_inspect_document_rejects_invalid_pdf() -> None:
    error = inspect_error(CORPUS / "invalid.pdf", make_limits())

    assert error.code == "unreadable_document"
    assert error.http_status == 422


def test_inspect_document_rejects_truncated_png_header(tmp_path: Path) -> None:
    path = write_file(tmp_path, "cut.png", (CORPUS / "linn.png").read_bytes()[:20])

    assert inspect_error(path, make_limits()).code == "unreadable_document"


def test_inspect_document_requires_pdf_password() -> None:
    error = inspect_error(CORPUS / "skew-encrypted.pdf", make_limits())

    assert error.code == "pdf_password_required"
    assert error.http_status == 422


def test_inspect_document_opens_pdf_with_password() -> None:
    info = inspect_document(CORPUS / "skew-encrypted.pdf", make_limits(), password="password")

    assert info.media_type == "application/pdf"
    assert info.page_count == 1


def test_inspect_document_rejects_wrong_pdf_password() -> None:
    error = inspect_error(CORPUS / "skew-encrypted.pdf", make_limits(), password="wrong")

    assert error.code == "pdf_password_invalid"
    assert error.http_status == 422


def test_inspect_document_opens_empty_password_pdf(tmp_path: Path) -> None:
    path = write_file(tmp_path, "encrypted.pdf", make_empty_password_pdf())

    info = inspect_document(path, make_limits())

    assert info.page_count == 1
    assert info.page_sizes_px == ((400, 400),)


def test_empty_password_pdf_factory_is_encrypted(tmp_path: Path) -> None:
    """The factory's PDF really is encrypted, and its content decrypts to the black square."""
    document = pdfium.PdfDocument(make_empty_password_pdf())
    revision = pdfium.raw.FPDF_GetSecurityHandlerRevision(document)
    page = document[0]
    pixels = np.asarray(page.render(scale=1).to_pil())
    page.close()
    document.close()

    assert revision == 2
    assert (pixels < 50).all(axis=2).mean() == pytest.approx(0.25, abs=0.01)


def test_inspect_document_rejects_pdf_over_max_pages() -> None:
    error = inspect_error(CORPUS / "multipage.pdf", make_limits(max_pages=5))

    assert error.code == "too_many_pages"
    assert error.http_status == 422
    assert "OCRQ_MAX_PAGES" in error.message
    assert "6 pages" in error.message


def test_inspect_document_rejects_tiff_over_max_pages() -> None:
    error = inspect_error(CORPUS / "multipage.tiff", make_limits(max_pages=2))

    assert error.code == "too_many_pages"
    assert "OCRQ_MAX_PAGES" in error.message


def test_inspect_document_lists_tiff_frames() -> None:
    info = inspect_document(CORPUS / "multipage.tiff", make_limits(max_pages=3))

    with Image.open(CORPUS / "multipage.tiff") as image:
        frame_sizes = []
        for frame in range(3):
            image.seek(frame)
            frame_sizes.append(image.size)
    assert info.page_sizes_px == tuple(frame_sizes)


def test_inspect_document_rejects_png_bomb_header(tmp_path: Path) -> None:
    path = write_file(tmp_path, "bomb.png", make_png_header(100_000, 100_000))

    started = time.perf_counter()
    error = inspect_error(path, make_limits())
    duration_s = time.perf_counter() - started

    assert error.code == "page_too_large"
    assert error.http_status == 422
    assert "OCRQ_MAX_PAGE_PIXELS" in error.message
    assert "100000x100000" in error.message
    assert duration_s < 1.0


def test_bomb_check_without_pillow_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With Pillow's own bomb check disabled the limit still holds, so max_page_pixels decides."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    path = write_file(tmp_path, "bomb.png", make_png_header(100_000, 100_000))

    assert inspect_error(path, make_limits()).code == "page_too_large"


def test_inspect_document_limit_above_pillow_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page within max_page_pixels passes even where Pillow's own threshold is lower."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path = write_file(tmp_path, "wide.png", make_png_header(3_000, 3_000))

    assert inspect_document(path, make_limits()).page_sizes_px == ((3_000, 3_000),)


def test_inspect_document_never_decodes_image_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A compressed 4000x4000 PNG over the limit is rejected from its header alone."""

    def fail_load(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", fail_load)
    data = image_bytes(Image.new("L", (4_000, 4_000), 255), "PNG")
    path = write_file(tmp_path, "large.png", data)

    error = inspect_error(path, make_limits(max_page_pixels=1_000_000))

    assert len(data) < 100_000
    assert error.code == "page_too_large"


def test_inspect_rejects_page_below_min_dpi(tmp_path: Path) -> None:
    path = write_file(tmp_path, "poster.pdf", make_pdf([(612, 792), (7_200, 7_200)]))

    error = inspect_error(path, make_limits(max_page_pixels=10_000_000))

    assert error.code == "page_too_large"
    assert error.http_status == 422
    assert "Page 2" in error.message
    assert "7200x7200" in error.message
    assert f"{MIN_PDF_RENDER_DPI} dpi" in error.message
    assert "OCRQ_MAX_PAGE_PIXELS" in error.message


def test_inspect_document_reduces_large_pdf_page_to_fit(tmp_path: Path) -> None:
    """A 30x30 inch page is 4320x4320 px at 144 dpi, so it is rendered smaller to fit the limit."""
    path = write_file(tmp_path, "poster.pdf", make_pdf([(2_160, 2_160)]))
    limits = make_limits(max_page_pixels=9_000_000)

    info = inspect_document(path, limits)

    assert info.page_sizes_px is not None
    width, height = info.page_sizes_px[0]
    assert width * height <= limits.max_page_pixels
    assert width >= 2_160 * MIN_PDF_RENDER_DPI // 72
    assert width == height


def test_inspect_document_sizes_pdf_pages_at_render_dpi(tmp_path: Path) -> None:
    path = write_file(tmp_path, "letter.pdf", make_pdf([(612, 792)]))

    info = inspect_document(path, make_limits(pdf_render_dpi=72))

    assert info.page_sizes_px == ((612, 792),)


def test_inspect_document_swaps_size_of_rotated_pdf_page(tmp_path: Path) -> None:
    path = write_file(tmp_path, "rotated.pdf", make_pdf([(612, 792)], rotation=90))

    info = inspect_document(path, make_limits(pdf_render_dpi=72))

    assert info.page_sizes_px == ((792, 612),)


def test_inspect_document_sizes_2400dpi_scan_from_image() -> None:
    """The 120x86 pt page is sized from its 4000x2864 image, not as 240x172 px at 144 dpi."""
    info = inspect_document(CORPUS / "2400dpi.pdf", make_limits(max_page_pixels=50_000_000))

    assert info.page_sizes_px is not None
    width, height = info.page_sizes_px[0]
    assert abs(width - 4_000) <= 1
    assert abs(height - 2_864) <= 1


def test_inspect_caps_2400dpi_scan() -> None:
    limits = make_limits(max_page_pixels=2_000_000)

    info = inspect_document(CORPUS / "2400dpi.pdf", limits)

    assert info.page_sizes_px is not None
    width, height = info.page_sizes_px[0]
    assert width * height <= limits.max_page_pixels
    assert width * height > 0.99 * limits.max_page_pixels
    assert width > 1_000


def test_inspect_document_swaps_size_for_exif_rotation(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: displayed turned 90 degrees clockwise
    data = image_bytes(Image.new("RGB", (60, 20)), "JPEG", exif=exif.tobytes())
    path = write_file(tmp_path, "photo.jpg", data)

    assert inspect_document(path, make_limits()).page_sizes_px == ((20, 60),)


def test_inspect_document_reduces_oversized_jpeg(tmp_path: Path) -> None:
    """A JPEG over the limit is sized for decoding at 1/2, 1/4 or 1/8 scale instead of rejected."""
    data = image_bytes(Image.new("RGB", (2_000, 1_000)), "JPEG")
    path = write_file(tmp_path, "photo.jpg", data)

    assert inspect_document(path, make_limits(max_page_pixels=600_000)).page_sizes_px == (
        (1_000, 500),
    )
    assert inspect_document(path, make_limits(max_page_pixels=40_000)).page_sizes_px == (
        (250, 125),
    )


def test_inspect_document_rejects_jpeg_too_large_after_reduction(tmp_path: Path) -> None:
    data = image_bytes(Image.new("RGB", (2_000, 1_000)), "JPEG")
    path = write_file(tmp_path, "photo.jpg", data)

    error = inspect_error(path, make_limits(max_page_pixels=30_000))

    assert error.code == "page_too_large"
    assert "2000x1000" in error.message


def test_inspect_document_rejects_jpeg_bomb_header(tmp_path: Path) -> None:
    """A JPEG whose frame header claims 65000x65000 pixels is rejected from that header."""
    data = bytearray(image_bytes(Image.new("L", (16, 16)), "JPEG"))
    frame_header = data.index(b"\xff\xc0")
    data[frame_header + 5 : frame_header + 9] = struct.pack(">HH", 65_000, 65_000)
    path = write_file(tmp_path, "bomb.jpg", bytes(data))

    error = inspect_error(path, make_limits())

    assert error.code == "page_too_large"
    assert "65000x65000" in error.message


def test_limits_from_settings_copies_each_limit() -> None:
    settings = Settings(
        max_file_bytes=1_234, max_pages=7, max_page_pixels=5_000, pdf_render_dpi=200
    )

    limits = Limits.from_settings(settings)

    assert limits == Limits(
        max_file_bytes=1_234, max_pages=7, max_page_pixels=5_000, pdf_render_dpi=200
    )


def test_limits_from_settings_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRQ_MAX_PAGES", "3")

    limits = Limits.from_settings(Settings())

    assert limits.max_pages == 3
    assert inspect_error(CORPUS / "multipage.pdf", limits).code == "too_many_pages"

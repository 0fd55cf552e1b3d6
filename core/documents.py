"""Document intake checks shared by the API, the worker and `ocrq run`: media type and limits.

Nothing here decodes pixels. PDFs are opened with PDFium, which parses the cross-reference table
and each page's objects but renders nothing. Images are opened through Pillow's format plugins,
which read the header alone. So a decompression bomb is rejected from its declared size before
any pixel buffer exists.

Every rejection is an InputError with a stable code, the HTTP status the API returns, and a
one-sentence message that names the setting behind the limit.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import (
    BmpImagePlugin,
    GifImagePlugin,
    ImageFile,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from core.errors import InputError
from core.settings import Settings

# Leading bytes sniff_media_type needs, because PDF readers accept %PDF- anywhere in the first 1024.
SNIFF_BYTES = 1024
POINTS_PER_INCH = 72

PDF = "application/pdf"
TIFF = "image/tiff"
PNG = "image/png"
JPEG = "image/jpeg"
WEBP = "image/webp"
BMP = "image/bmp"
GIF = "image/gif"
ACCEPTED_MEDIA_TYPES = (PDF, TIFF, PNG, JPEG, WEBP, BMP, GIF)

# Oversized PDF pages are rendered below pdf_render_dpi down to this resolution, where 10 pt
# text is still 10 px high. A page that would need less is rejected.
MIN_PDF_RENDER_DPI = 72
# JPEG decoders can scale by 1/2, 1/4 or 1/8 while decoding, so an oversized JPEG is reduced.
_JPEG_REDUCTIONS = (2, 4, 8)

# An image covering at least this share of the page area (a scan) may raise the render scale.
_SCAN_COVERAGE = 0.5
# Sizes of the BMP info headers Pillow reads (BITMAPCOREHEADER up to BITMAPV5HEADER).
_BMP_HEADER_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)
_EXIF_ORIENTATION_TAG = 0x0112
_PIL_OPEN_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError)

# PDFium is not thread-safe, even across different documents, so every call into it from this
# process (API thread pool, worker threads) is serialised by this one lock.
PDFIUM_LOCK = threading.RLock()


@dataclass(frozen=True)
class Limits:
    """Input limits; each one is the OCRQ_ setting of the same name, upper-cased."""

    max_file_bytes: int
    max_pages: int
    max_page_pixels: int
    pdf_render_dpi: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_file_bytes=settings.max_file_bytes,
            max_pages=settings.max_pages,
            max_page_pixels=settings.max_page_pixels,
            pdf_render_dpi=settings.pdf_render_dpi,
        )


@dataclass(frozen=True)
class DocumentInfo:
    """Result of inspect_document: the sniffed type, the page count and each page's raster size."""

    media_type: str
    page_count: int
    # (width, height) in pixels of each page as rasterize will produce it: PDF pages after the
    # scale decision, images after the EXIF rotation.
    page_sizes_px: tuple[tuple[int, int], ...] | None = None


def sniff_media_type(head: bytes) -> str:
    """Return a document's media type from its first SNIFF_BYTES bytes, never from its name."""
    if not head:
        message = "Expected a document, but the file is empty."
        raise InputError(message, code="unreadable_document", http_status=422)

    if head.startswith(b"%PDF-"):
        return PDF
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return TIFF
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return PNG
    if head.startswith(b"\xff\xd8\xff"):
        return JPEG
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return WEBP
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return GIF
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return BMP
    # PDF readers also accept a header after leading junk, but a ZIP archive may hold a PDF.
    if not head.startswith(b"PK") and b"%PDF-" in head[:SNIFF_BYTES]:
        return PDF

    accepted = ", ".join(ACCEPTED_MEDIA_TYPES)
    message = (
        f"Expected one of {accepted}, but the content matches none of them "
        f"(first bytes {head[:8].hex()})."
    )
    raise InputError(message, code="unsupported_media_type", http_status=415)


def inspect_document(path: Path, limits: Limits, password: str | None = None) -> DocumentInfo:
    """Check a stored document against limits without rendering it, and describe its pages.

    Raises InputError with code file_too_large (413), unsupported_media_type (415),
    unreadable_document, too_many_pages, page_too_large, pdf_password_required or
    pdf_password_invalid (all 422).
    """
    media_type = read_media_type(path, limits)
    if media_type == PDF:
        sizes = _inspect_pdf(path, limits, password)
    else:
        sizes = _inspect_image(path, media_type, limits)
    return DocumentInfo(media_type=media_type, page_count=len(sizes), page_sizes_px=sizes)


def read_media_type(path: Path, limits: Limits) -> str:
    """Check the file size against max_file_bytes, then sniff the media type from the content."""
    size_bytes = path.stat().st_size
    if size_bytes > limits.max_file_bytes:
        message = (
            f"The file is {size_bytes} bytes but OCRQ_MAX_FILE_BYTES allows at most "
            f"{limits.max_file_bytes} bytes."
        )
        raise InputError(message, code="file_too_large", http_status=413)

    with path.open("rb") as file:
        head = file.read(SNIFF_BYTES)
    return sniff_media_type(head)


def check_page_count(page_count: int, limits: Limits, *, at_least: bool = False) -> None:
    """Raise too_many_pages when page_count exceeds max_pages (at_least: counting stopped early)."""
    if page_count <= limits.max_pages:
        return
    counted = f"more than {page_count - 1}" if at_least else str(page_count)
    message = (
        f"The document has {counted} pages but OCRQ_MAX_PAGES allows at most {limits.max_pages}."
    )
    raise InputError(message, code="too_many_pages", http_status=422)


def check_page_pixels(
    page_index: int, size_px: tuple[int, int], limits: Limits, *, dpi: float | None = None
) -> None:
    """Raise page_too_large when a page's raster would exceed max_page_pixels."""
    width, height = size_px
    if width * height <= limits.max_page_pixels:
        return
    at_dpi = f" at {dpi:.0f} dpi" if dpi is not None else ""
    message = (
        f"Page {page_index + 1} is {width}x{height} pixels{at_dpi} ({width * height} pixels) "
        f"but OCRQ_MAX_PAGE_PIXELS allows at most {limits.max_page_pixels} pixels per page."
    )
    raise InputError(message, code="page_too_large", http_status=422)


def unreadable(message: str) -> InputError:
    """Build the unreadable_document error (422) from a one-sentence message."""
    return InputError(message, code="unreadable_document", http_status=422)


# --- PDF ---------------------------------------------------------------------------------------


@contextmanager
def open_pdf(path: Path, password: str | None = None) -> Iterator[pdfium.PdfDocument]:
    """Open a PDF with PDFium (nothing rendered) and close it on exit.

    The lock is not held while the caller uses the document, so the caller must take
    PDFIUM_LOCK around each PDFium call. An empty password counts as none, and PDFium always
    tries the empty user password, so PDFs encrypted with one open without a password.
    """
    with PDFIUM_LOCK:
        document = _load_pdf(path, password or None)
    try:
        yield document
    finally:
        with PDFIUM_LOCK:
            document.close()


def pdf_render_scale(page: pdfium.PdfPage, page_index: int, limits: Limits) -> float:
    """Decide the scale (pixels per point) a PDF page is rendered at, within max_page_pixels.

    The target is pdf_render_dpi. A scanned page whose image has more pixels than that gives
    is rendered at the image's own resolution instead, because a 2400 dpi scan on a 120x86 pt
    page would give 240x172 px at 144 dpi, too small to read. A page over max_page_pixels at
    the target is rendered smaller, down to MIN_PDF_RENDER_DPI, and rejected below that.
    Call with PDFIUM_LOCK held.
    """
    width_pt, height_pt = page.get_size()
    if width_pt <= 0 or height_pt <= 0:
        message = f"Expected a page with a positive size, but page {page_index + 1} has none."
        raise unreadable(message)

    base_scale = limits.pdf_render_dpi / POINTS_PER_INCH
    target_scale = max(base_scale, _scan_image_scale(page, width_pt * height_pt))
    scale = _fit_scale(width_pt, height_pt, target_scale, limits.max_page_pixels)

    min_dpi = min(MIN_PDF_RENDER_DPI, limits.pdf_render_dpi)
    if scale < min_dpi / POINTS_PER_INCH:
        size_px = pdf_render_size(width_pt, height_pt, min_dpi / POINTS_PER_INCH)
        check_page_pixels(page_index, size_px, limits, dpi=min_dpi)
    return scale


def pdf_render_size(width_pt: float, height_pt: float, scale: float) -> tuple[int, int]:
    """Return the bitmap size PdfPage.render produces (it rounds each side up)."""
    return math.ceil(width_pt * scale), math.ceil(height_pt * scale)


def _inspect_pdf(path: Path, limits: Limits, password: str | None) -> tuple[tuple[int, int], ...]:
    sizes: list[tuple[int, int]] = []
    with open_pdf(path, password) as document, PDFIUM_LOCK:
        page_count = len(document)
        if page_count == 0:
            raise unreadable("Expected a PDF with at least one page, but it has none.")
        check_page_count(page_count, limits)

        for page_index in range(page_count):
            page = load_pdf_page(document, page_index)
            try:
                scale = pdf_render_scale(page, page_index, limits)
                width_pt, height_pt = page.get_size()
                sizes.append(pdf_render_size(width_pt, height_pt, scale))
            finally:
                page.close()
    return tuple(sizes)


def load_pdf_page(document: pdfium.PdfDocument, page_index: int) -> pdfium.PdfPage:
    """Load one page's objects without rendering it. Call with PDFIUM_LOCK held."""
    try:
        return document[page_index]
    except pdfium.PdfiumError as exc:
        message = f"Expected a readable PDF page, but PDFium could not load page {page_index + 1}."
        raise unreadable(message) from exc


def _load_pdf(path: Path, password: str | None) -> pdfium.PdfDocument:
    try:
        return pdfium.PdfDocument(str(path), password=password)
    except pdfium.PdfiumError as exc:
        error = _pdf_open_error(exc.err_code, password)
        raise error from exc


def _pdf_open_error(err_code: int | None, password: str | None) -> InputError:
    if err_code == pdfium_c.FPDF_ERR_PASSWORD and password is None:
        message = (
            "The PDF is protected by a user password and none was given, "
            "so send the document's password with the job."
        )
        return InputError(message, code="pdf_password_required", http_status=422)
    if err_code == pdfium_c.FPDF_ERR_PASSWORD:
        message = "The PDF is protected by a user password and the given password does not open it."
        return InputError(message, code="pdf_password_invalid", http_status=422)
    if err_code == pdfium_c.FPDF_ERR_SECURITY:
        message = "Expected a PDF with standard encryption, but it uses an unsupported handler."
        return unreadable(message)
    message = "Expected a PDF, but PDFium could not parse the file (corrupt or truncated)."
    return unreadable(message)


def _scan_image_scale(page: pdfium.PdfPage, page_area_pt2: float) -> float:
    """Return pixels per point of the largest image covering most of the page, else 0.

    Only top-level images count, because the bounds of objects nested in form XObjects are
    in the form's coordinates.
    """
    best_scale = 0.0
    for image in page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=1):
        try:
            width_px, height_px = image.get_px_size()
            left, bottom, right, top = image.get_bounds()
        except pdfium.PdfiumError:
            continue
        area_pt2 = (right - left) * (top - bottom)
        if area_pt2 <= 0 or area_pt2 < _SCAN_COVERAGE * page_area_pt2:
            continue
        # Area ratio rather than width ratio, so a rotated placement gives the same scale.
        best_scale = max(best_scale, math.sqrt(width_px * height_px / area_pt2))
    return best_scale


def _fit_scale(width_pt: float, height_pt: float, scale: float, max_pixels: int) -> float:
    """Return scale, or the largest smaller scale whose render stays within max_pixels."""
    if _pixel_count(width_pt, height_pt, scale) <= max_pixels:
        return scale
    scale = math.sqrt(max_pixels / (width_pt * height_pt))
    # pdf_render_size rounds each side up, which can add a row or column, so step down.
    while _pixel_count(width_pt, height_pt, scale) > max_pixels:
        scale *= 0.999
    return scale


def _pixel_count(width_pt: float, height_pt: float, scale: float) -> int:
    width, height = pdf_render_size(width_pt, height_pt, scale)
    return width * height


# --- Images ------------------------------------------------------------------------------------

_IMAGE_PLUGINS: dict[str, type[ImageFile.ImageFile]] = {
    TIFF: TiffImagePlugin.TiffImageFile,
    PNG: PngImagePlugin.PngImageFile,
    JPEG: JpegImagePlugin.JpegImageFile,
    WEBP: WebPImagePlugin.WebPImageFile,
    BMP: BmpImagePlugin.BmpImageFile,
    GIF: GifImagePlugin.GifImageFile,
}


def open_image(path: Path, media_type: str) -> ImageFile.ImageFile:
    """Open an image file by reading its header only, for the caller to close.

    The format plugin is called directly rather than through Image.open, so Pillow's
    MAX_IMAGE_PIXELS check does not run first and max_page_pixels decides instead.
    """
    plugin = _IMAGE_PLUGINS[media_type]
    try:
        return plugin(str(path))
    except _PIL_OPEN_ERRORS as exc:
        message = f"Expected a readable {media_type} file, but its header could not be parsed."
        raise unreadable(message) from exc


def seek_image_page(image: ImageFile.ImageFile, page_index: int) -> None:
    """Move an open image to a page, reading that frame's header but not its pixels."""
    try:
        image.seek(page_index)
    except EOFError as exc:
        raise IndexError(f"page index {page_index} is past the last page") from exc
    except _PIL_OPEN_ERRORS as exc:
        message = f"Expected a readable image, but the header of page {page_index + 1} is corrupt."
        raise unreadable(message) from exc


def fit_image_page(image: ImageFile.ImageFile, page_index: int, limits: Limits) -> None:
    """Check the current frame against max_page_pixels before any pixel is decoded.

    An oversized JPEG is set to decode at 1/2, 1/4 or 1/8 scale (Image.draft), which changes
    image.size and bounds the decoder's memory. Any other oversized image is rejected.
    """
    width, height = image.size
    if width * height <= limits.max_page_pixels:
        return

    # draft() returns None without reducing when the JPEG has several tiles or was drafted before.
    reduction = _jpeg_reduction(image, limits.max_page_pixels)
    if reduction is not None and image.draft(None, (width // reduction, height // reduction)):
        width, height = image.size
    check_page_pixels(page_index, (width, height), limits)


def oriented_size(image: ImageFile.ImageFile) -> tuple[int, int]:
    """Return the current frame's size after its EXIF orientation is applied."""
    width, height = image.size
    # Pillow's TIFF plugin reports the oriented size already, and rotates the frame on load.
    if isinstance(image, TiffImagePlugin.TiffImageFile):
        return width, height
    orientation = _exif_orientation(image)
    # Orientations 5 to 8 turn the image by 90 degrees, so width and height swap.
    if orientation in (5, 6, 7, 8):
        return height, width
    return width, height


def _exif_orientation(image: ImageFile.ImageFile) -> int:
    # PngImageFile.getexif() decodes the whole image to look for an eXIf chunk after the pixel
    # data, so a PNG is read only for the EXIF found before it.
    # NOTE: a PNG whose eXIf chunk follows the pixel data is reported unrotated here, although
    # rasterize rotates it, so its page_sizes_px entry has width and height swapped.
    if isinstance(image, PngImagePlugin.PngImageFile) and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
    except _PIL_OPEN_ERRORS:
        return 1
    return orientation if isinstance(orientation, int) else 1


def _jpeg_reduction(image: ImageFile.ImageFile, max_pixels: int) -> int | None:
    """Return the smallest JPEG decode reduction that fits max_pixels, or None if none does."""
    if not isinstance(image, JpegImagePlugin.JpegImageFile):
        return None
    width, height = image.size
    for reduction in _JPEG_REDUCTIONS:
        reduced_pixels = math.ceil(width / reduction) * math.ceil(height / reduction)
        if reduced_pixels <= max_pixels:
            return reduction
    return None


def _inspect_image(path: Path, media_type: str, limits: Limits) -> tuple[tuple[int, int], ...]:
    sizes: list[tuple[int, int]] = []
    with open_image(path, media_type) as image:
        if media_type == TIFF:
            counted = _count_tiff_frames(image, limit=limits.max_pages + 1)
            check_page_count(counted, limits, at_least=True)
        else:
            counted = 1

        for page_index in range(counted):
            seek_image_page(image, page_index)
            fit_image_page(image, page_index, limits)
            sizes.append(oriented_size(image))
    return tuple(sizes)


def _count_tiff_frames(image: ImageFile.ImageFile, limit: int | None) -> int:
    count = 1
    while limit is None or count < limit:
        try:
            image.seek(count)
        except EOFError:
            break
        except _PIL_OPEN_ERRORS as exc:
            message = f"Expected a readable TIFF, but the header of page {count + 1} is corrupt."
            raise unreadable(message) from exc
        count += 1
    image.seek(0)
    return count

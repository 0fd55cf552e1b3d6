"""Rasterize stage: turn a stored document into 8-bit RGB page images, one page at a time.

PDF pages are rendered by PDFium at the scale core.documents.pdf_render_scale decides, so a
scanned page keeps its image's resolution. Image files are decoded frame by frame (every TIFF
frame is a page) with the EXIF orientation applied. Each page is checked against the limits
before its pixels are decoded, and transparency is flattened on white.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
from PIL import Image, ImageCms, ImageFile

from core.documents import (
    PDF,
    PDFIUM_LOCK,
    TIFF,
    Limits,
    check_page_count,
    fit_image_page,
    load_pdf_page,
    open_image,
    open_pdf,
    pdf_render_scale,
    read_media_type,
    seek_image_page,
    unreadable,
)
from core.errors import InputError

_WHITE = (255, 255, 255)
_EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientation value -> the transpose that makes the image upright.
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Pillow's 16-bit greyscale modes, plus "I" (32-bit), which Pillow also uses for 16-bit files.
_WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "PA")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


@dataclass(frozen=True)
class RasterPage:
    """One page ready for an engine: its 0-based index and its 8-bit RGB image."""

    index: int
    image: Image.Image


def iter_pages(
    path: Path, limits: Limits, password: str | None = None, start: int = 0
) -> Iterator[RasterPage]:
    """Yield the pages of a document in order from page index `start`, one decoded at a time.

    Raises the InputError codes of core.documents.inspect_document, checked page by page.
    Closing the generator early closes the document.
    """
    media_type = read_media_type(path, limits)
    if media_type == PDF:
        yield from _iter_pdf_pages(path, limits, password, start)
    else:
        yield from _iter_image_pages(path, media_type, limits, start)


def render_page(path: Path, index: int, limits: Limits, password: str | None = None) -> Image.Image:
    """Render one page (0-based index) as 8-bit RGB, for tasks that handle a single page.

    Raises IndexError when the document has no such page, and InputError as iter_pages does.
    """
    media_type = read_media_type(path, limits)
    if media_type == PDF:
        with open_pdf(path, password) as document:
            with PDFIUM_LOCK:
                page_count = len(document)
            check_page_count(page_count, limits)
            if not 0 <= index < page_count:
                raise IndexError(f"page index {index} is outside 0..{page_count - 1}")
            return _render_pdf_page(document, index, limits)

    if index < 0 or (index > 0 and media_type != TIFF):
        raise IndexError(f"page index {index} is outside 0..0 for {media_type}")
    check_page_count(index + 1, limits, at_least=True)
    with open_image(path, media_type) as image:
        seek_image_page(image, index)
        return _decode_image_page(image, index, limits)


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new 8-bit RGB copy of a decoded image, with any transparency flattened on white.

    16-bit greyscale is scaled (65535 becomes 255) rather than clipped, and CMYK goes through
    the embedded ICC profile when there is one.
    """
    if image.mode in _WIDE_GREY_MODES:
        image = _wide_grey_to_8bit(image)
    if image.mode == "CMYK":
        return _cmyk_to_rgb(image)
    if image.mode == "LAB":
        # Image.convert() has no real CIELAB transform, so go through LittleCMS.
        lab = ImageCms.createProfile("LAB")
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(image, lab, srgb, outputMode="RGB")
        assert converted is not None  # None only when converting in place
        return converted

    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        flattened = Image.new("RGB", rgba.size, _WHITE)
        flattened.paste(rgba, mask=rgba.getchannel("A"))
        return flattened
    if image.mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def _iter_pdf_pages(
    path: Path, limits: Limits, password: str | None, start: int
) -> Iterator[RasterPage]:
    with open_pdf(path, password) as document:
        with PDFIUM_LOCK:
            page_count = len(document)
        check_page_count(page_count, limits)
        for index in range(start, page_count):
            yield RasterPage(index=index, image=_render_pdf_page(document, index, limits))


def _render_pdf_page(document: pdfium.PdfDocument, index: int, limits: Limits) -> Image.Image:
    # The lock is held for this page only, so other threads can render between pages.
    with PDFIUM_LOCK:
        page = load_pdf_page(document, index)
        try:
            scale = pdf_render_scale(page, index, limits)
            # /Rotate is applied by PDFium; rev_byteorder gives RGB instead of BGR.
            bitmap = page.render(scale=scale, rev_byteorder=True)
            try:
                # to_pil() copies an RGB buffer, so the bitmap can be freed at once.
                image: Image.Image = bitmap.to_pil()
            finally:
                bitmap.close()
        except pdfium.PdfiumError as exc:
            message = f"Expected a renderable PDF page, but PDFium failed on page {index + 1}."
            raise unreadable(message) from exc
        finally:
            page.close()

    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _iter_image_pages(
    path: Path, media_type: str, limits: Limits, start: int
) -> Iterator[RasterPage]:
    with open_image(path, media_type) as image:
        index = start
        while True:
            if index > 0 and media_type != TIFF:
                return
            try:
                seek_image_page(image, index)
            except IndexError:
                return
            check_page_count(index + 1, limits, at_least=True)
            yield RasterPage(index=index, image=_decode_image_page(image, index, limits))
            index += 1


def _decode_image_page(image: ImageFile.ImageFile, index: int, limits: Limits) -> Image.Image:
    """Decode the current frame after checking its header size, then make it upright RGB."""
    fit_image_page(image, index, limits)
    try:
        image.load()
        # Pillow's TIFF plugin has already applied and removed the orientation tag by now.
        orientation = image.getexif().get(_EXIF_ORIENTATION_TAG, 1)
        page = to_rgb(image)
    except Image.DecompressionBombError as exc:
        # Pillow re-checks TIFF and GIF sizes while decoding, against its own MAX_IMAGE_PIXELS.
        message = (
            f"Page {index + 1} is {image.width}x{image.height} pixels, more than Pillow decodes "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels), so OCRQ_MAX_PAGE_PIXELS must not "
            "exceed that."
        )
        raise InputError(message, code="page_too_large", http_status=422) from exc
    except _DECODE_ERRORS as exc:
        message = f"Expected a decodable image, but page {index + 1} is corrupt or truncated."
        raise unreadable(message) from exc

    transpose = _ORIENTATION_TRANSPOSE.get(orientation)
    if transpose is not None:
        page = page.transpose(transpose)
    return page


def _wide_grey_to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit greyscale to 8 bits; a tRNS grey value becomes an alpha channel."""
    values = np.asarray(image)
    wide = values.clip(0, 65535).astype(np.uint32)
    grey = ((wide * 255 + 32767) // 65535).astype(np.uint8)  # rounds to the nearest 8-bit value
    result = Image.fromarray(grey, mode="L")

    transparency = image.info.get("transparency")
    if isinstance(transparency, int):
        alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
        result = Image.merge("LA", (result, Image.fromarray(alpha, mode="L")))
    return result


def _cmyk_to_rgb(image: Image.Image) -> Image.Image:
    """Convert CMYK through its ICC profile, or with Pillow's plain formula when it has none."""
    # Pillow's JPEG decoder already undoes the inverted CMYK that Adobe applications write.
    # NOTE: the ICC branch is untested, because no CMYK profile is available to the tests.
    icc_profile = image.info.get("icc_profile")
    if icc_profile:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
            srgb = ImageCms.createProfile("sRGB")
            converted = ImageCms.profileToProfile(image, source, srgb, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            converted = None
        if converted is not None:
            return converted
    return image.convert("RGB")

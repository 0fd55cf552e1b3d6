"""Streaming multipart upload: the file part goes to a temporary file, with the size limit
enforced while the body is read, so an oversized upload is rejected before it is all received.

FastAPI's own UploadFile parses the whole body before the route runs, so it would accept any
size. This module reads the request stream itself with python-multipart's push parser.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.errors import ApiError

FILE_FIELD = "file"
# Form fields other than the file are small (options, metadata JSON); this caps each one.
MAX_FIELD_BYTES = 64 * 1024
MAX_FIELDS = 16
# Room for the form fields and multipart framing when Content-Length is checked up front.
_FORM_OVERHEAD_BYTES = MAX_FIELDS * MAX_FIELD_BYTES


@dataclass
class Upload:
    """A parsed multipart request: the file on disk, its client-side name and the other fields."""

    path: Path | None = None
    filename: str | None = None
    size_bytes: int = 0
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        """Delete the temporary file, if any."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


def file_too_large(max_file_bytes: int) -> ApiError:
    """Build the 413 error for an upload over OCRQ_MAX_FILE_BYTES."""
    message = (
        f"file is larger than the maximum of {max_file_bytes} bytes; "
        "send a smaller file or raise OCRQ_MAX_FILE_BYTES"
    )
    return ApiError(413, "file_too_large", message)


class _FormReader:
    """Collects the parts of one multipart body as python-multipart's callbacks deliver them."""

    def __init__(self, upload: Upload, temp_dir: Path | None, max_file_bytes: int) -> None:
        self.upload = upload
        self.temp_dir = temp_dir
        self.max_file_bytes = max_file_bytes
        self.error: ApiError | None = None
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._part_name: str | None = None
        self._part_file: IO[bytes] | None = None
        self._part_text = bytearray()

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
        }

    def _on_part_begin(self) -> None:
        self._headers = {}
        self._part_name = None
        self._part_text = bytearray()

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[self._header_name.lower()] = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")

        if self._part_name == FILE_FIELD:
            if self.upload.path is not None:
                self.error = ApiError(422, "invalid_request", "send exactly one file part")
                return
            raw_filename = options.get(b"filename")
            if raw_filename:
                self.upload.filename = Path(raw_filename.decode("utf-8", "replace")).name[:255]
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in _on_part_end)
                prefix="ocrq-upload-", dir=self.temp_dir, delete=False
            )
            self.upload.path = Path(handle.name)
            self._part_file = handle
            return

        if len(self.upload.fields) >= MAX_FIELDS:
            message = f"too many form fields; at most {MAX_FIELDS} are accepted"
            self.error = ApiError(422, "invalid_request", message)

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.error is not None:
            return
        chunk = data[start:end]

        if self._part_file is not None:
            self.upload.size_bytes += len(chunk)
            if self.upload.size_bytes > self.max_file_bytes:
                self.error = file_too_large(self.max_file_bytes)
                return
            self._part_file.write(chunk)
            return

        self._part_text += chunk
        if len(self._part_text) > MAX_FIELD_BYTES:
            message = (
                f"form field {self._part_name!r} is longer than the maximum of "
                f"{MAX_FIELD_BYTES} bytes"
            )
            self.error = ApiError(422, "invalid_request", message)

    def _on_part_end(self) -> None:
        if self._part_file is not None:
            self._part_file.close()
            self._part_file = None
            return
        if self._part_name and self.error is None:
            self.upload.fields[self._part_name] = self._part_text.decode("utf-8", "replace")

    def close(self) -> None:
        if self._part_file is not None:
            self._part_file.close()
            self._part_file = None


async def read_upload(request: Request, *, max_file_bytes: int, temp_dir: Path | None) -> Upload:
    """Stream a multipart/form-data body into an Upload; raise ApiError on a bad or large body.

    The caller owns the returned Upload and must call discard() when done with the file.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        message = (
            "expected a multipart/form-data body with a 'file' part, got content type "
            f"{request.headers.get('content-type') or 'none'!r}"
        )
        raise ApiError(415, "unsupported_request_type", message)

    # A declared length far over the limit is rejected before any byte is read.
    declared = request.headers.get("content-length")
    too_long = (
        declared is not None
        and declared.isdigit()
        and int(declared) > (max_file_bytes + _FORM_OVERHEAD_BYTES)
    )
    if too_long:
        raise file_too_large(max_file_bytes)

    upload = Upload()
    reader = _FormReader(upload, temp_dir, max_file_bytes)
    await parse_form(request, boundary, reader, upload.discard)

    if reader.error is not None:
        upload.discard()
        raise reader.error
    if upload.path is None:
        message = "the request has no 'file' part; send the document as multipart field 'file'"
        raise ApiError(422, "missing_file", message)
    return upload


async def parse_form(
    request: Request, boundary: bytes, reader: _FormReader, discard: Callable[[], None]
) -> None:
    """Feed the request body through python-multipart's push parser into `reader`.

    On failure, closes the open part file, calls `discard` and raises ApiError: the reader's
    own error, or 400 malformed_body when the parser rejects the body.
    """
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
            if reader.error is not None:
                raise reader.error
        parser.finalize()
    except ApiError:
        reader.close()
        discard()
        raise
    except Exception as exc:
        reader.close()
        discard()
        message = "the multipart/form-data body is malformed and could not be parsed"
        raise ApiError(400, "malformed_body", message) from exc

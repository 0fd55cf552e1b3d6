"""Streaming multipart upload of a batch: many `file` parts, each to its own temporary file.

The same push parser as api/upload.py, with OCRQ_MAX_FILE_BYTES applied to each file and
OCRQ_MAX_BATCH_JOBS to the number of files while the body is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import parse_options_header
from starlette.requests import Request

from api.errors import ApiError
from api.upload import FILE_FIELD, Upload, _FormReader, parse_form


@dataclass
class BatchUpload:
    """The files of a batch request in part order, and its other form fields."""

    files: list[Upload] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)

    def discard(self) -> None:
        for upload in self.files:
            upload.discard()


class _BatchFormReader(_FormReader):
    """Collects each file part into a new Upload, where the single-file reader rejects a second."""

    def __init__(self, batch: BatchUpload, max_file_bytes: int, max_files: int) -> None:
        super().__init__(Upload(), None, max_file_bytes)
        self.batch = batch
        self.max_files = max_files
        self.upload.fields = batch.fields

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != FILE_FIELD:
            super()._on_headers_finished()
            return
        if len(self.batch.files) >= self.max_files:
            message = (
                f"A batch holds at most {self.max_files} documents (OCRQ_MAX_BATCH_JOBS); "
                "send the rest in another batch."
            )
            self.error = ApiError(422, "batch_size_invalid", message)
            return

        upload = Upload(fields=self.batch.fields)
        self.batch.files.append(upload)
        self.upload = upload
        super()._on_headers_finished()


async def read_batch_upload(
    request: Request, *, max_file_bytes: int, max_files: int
) -> BatchUpload:
    """Stream a multipart/form-data body with `file` parts into a BatchUpload.

    Raises ApiError for a malformed body, a file over max_file_bytes or too many files. The
    caller owns the result and must call discard() when done.
    """
    content_type, options = parse_options_header(request.headers.get("content-type"))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        message = (
            "Expected a multipart/form-data body with `file` parts or a JSON body, got content "
            f"type {request.headers.get('content-type') or 'none'!r}."
        )
        raise ApiError(415, "unsupported_request_type", message)

    batch = BatchUpload()
    reader = _BatchFormReader(batch, max_file_bytes, max_files)
    await parse_form(request, boundary, reader, batch.discard)

    if not batch.files:
        batch.discard()
        message = "The request has no `file` part; send each document as a multipart `file` part."
        raise ApiError(422, "missing_file", message)
    return batch

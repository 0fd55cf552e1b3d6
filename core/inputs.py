"""Where a job's document comes from: an upload, a URL or an S3 object, and how it is prepared.

An upload is inspected at intake and stored at once. A URL or an S3 object is only checked at
intake (the SSRF guard, the bucket allow-list), so a bad one is rejected before anything is
stored. The worker downloads it with fetch_source() and inspects it there.

A password-protected PDF is stored decrypted: the password opens it once at intake, PDFium
saves a copy without security, and the job's source records {"pdf_decrypted": true}. So the
password is never stored, and any worker can read the document.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from core.documents import PDF, PDFIUM_LOCK, Limits, inspect_document
from core.errors import InputError, TransientError
from core.fetch import fetch_url
from core.logging import get_logger
from core.settings import Settings
from core.ssrf import check_url, parse_allowlist
from core.storage import Storage

SOURCE_UPLOAD = "upload"
SOURCE_URL = "url"
SOURCE_S3 = "s3"
# Stand-in media type of a URL or S3 job until the worker has fetched and sniffed it.
UNKNOWN_MEDIA_TYPE = "application/octet-stream"
MAX_URL_CHARS = 2048
MAX_S3_KEY_CHARS = 1024

log = get_logger(__name__)


@dataclass(frozen=True)
class PreparedInput:
    """A document accepted at intake, with the job columns it fills.

    `path` (or `data`, a decrypted copy) is what store() writes; both are None for a URL or
    S3 source, which the worker fetches.
    """

    source: dict[str, Any]
    media_type: str
    size_bytes: int
    page_count: int | None
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)

    def store(self, storage: Storage, key: str) -> None:
        """Write the document to storage at `key`; a URL or S3 source has nothing to write yet."""
        if self.data is not None:
            storage.put_bytes(key, self.data, content_type=self.media_type)
        elif self.path is not None:
            storage.put_file(key, self.path, content_type=self.media_type)


def parse_source(body: Mapping[str, Any]) -> dict[str, Any]:
    """Return the source of a JSON request, {"type": "url"|"s3", ...}; InputError (422) if bad.

    `body` contains exactly one of "url" (a string) or "s3" ({"bucket", "key"}).
    """
    kinds = [name for name in (SOURCE_URL, SOURCE_S3) if name in body]
    if len(kinds) != 1:
        message = (
            'Expected exactly one of "url" or "s3" in the request body, '
            f"got {' and '.join(kinds) or 'neither'}."
        )
        raise InputError(message, code="invalid_source")

    if kinds[0] == SOURCE_URL:
        url = body[SOURCE_URL]
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
            message = f"Expected url to be a string of 1 to {MAX_URL_CHARS} characters."
            raise InputError(message, code="invalid_url")
        return {"type": SOURCE_URL, "url": url}

    location = body[SOURCE_S3]
    bucket = location.get("bucket") if isinstance(location, dict) else None
    key = location.get("key") if isinstance(location, dict) else None
    well_formed = (
        isinstance(bucket, str)
        and isinstance(key, str)
        and 0 < len(bucket) <= 255
        and 0 < len(key) <= MAX_S3_KEY_CHARS
    )
    if not well_formed:
        message = 'Expected s3 to be an object {"bucket": "...", "key": "..."} of two strings.'
        raise InputError(message, code="invalid_s3_location")
    return {"type": SOURCE_S3, "bucket": bucket, "key": key}


def check_source(source: Mapping[str, Any], settings: Settings) -> None:
    """Reject a URL the SSRF guard blocks, or an S3 bucket not in OCRQ_S3_INPUT_BUCKETS.

    Raises InputError invalid_url or url_not_allowed (422) from core.ssrf, or
    bucket_not_allowed (422).
    """
    if source["type"] == SOURCE_URL:
        check_url(source["url"], parse_allowlist(settings.url_allowlist))
        return

    if source["type"] == SOURCE_S3:
        allowed = input_buckets(settings)
        if source["bucket"] not in allowed:
            message = (
                f"Bucket {source['bucket'][:64]!r} is not one the service may read; "
                "OCRQ_S3_INPUT_BUCKETS lists the buckets it may."
            )
            raise InputError(message, code="bucket_not_allowed")
        return

    message = f"Expected a source of type url or s3, got {source['type']!r}."
    raise InputError(message, code="invalid_source")


def input_buckets(settings: Settings) -> set[str]:
    return {name.strip() for name in settings.s3_input_buckets.split(",") if name.strip()}


def prepare_upload(path: Path, limits: Limits, password: str | None = None) -> PreparedInput:
    """Inspect an uploaded document; a PDF the password opens is replaced by a decrypted copy.

    Raises InputError from core.documents.inspect_document when the document is not accepted.
    """
    info = inspect_document(path, limits, password)
    source: dict[str, Any] = {"type": SOURCE_UPLOAD}
    size_bytes = path.stat().st_size
    if not (password and info.media_type == PDF and pdf_is_encrypted(path)):
        return PreparedInput(source, info.media_type, size_bytes, info.page_count, path=path)

    data = decrypt_pdf(path, password)
    source["pdf_decrypted"] = True
    log.info("input.decrypted", bytes=len(data))
    return PreparedInput(source, info.media_type, len(data), info.page_count, data=data)


def prepare_source(source: dict[str, Any], settings: Settings) -> PreparedInput:
    """Check a URL or S3 source (see check_source); the worker fetches and inspects it later."""
    check_source(source, settings)
    return PreparedInput(source, UNKNOWN_MEDIA_TYPE, 0, None)


def pdf_is_encrypted(path: Path) -> bool:
    """Return True when the PDF needs a password other than the empty one to open."""
    with PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as exc:
            return bool(exc.err_code == pdfium_c.FPDF_ERR_PASSWORD)
        document.close()
    return False


def decrypt_pdf(path: Path, password: str) -> bytes:
    """Return the PDF saved without its security handler, opened with `password`.

    The caller has checked the password (inspect_document), so an error here is unexpected.
    """
    buffer = io.BytesIO()
    with PDFIUM_LOCK:
        document = pdfium.PdfDocument(str(path), password=password)
        try:
            document.save(buffer, flags=pdfium_c.FPDF_REMOVE_SECURITY)
        finally:
            document.close()
    return buffer.getvalue()


def fetch_source(source: Mapping[str, Any], dest: Path, settings: Settings) -> int:
    """Download a URL or S3 source to `dest` within OCRQ_MAX_FILE_BYTES; return its size.

    Raises InputError for a rejected or missing input, and TransientError for network
    failures and timeouts, which a later attempt may get past.
    """
    if source["type"] == SOURCE_URL:
        fetched = fetch_url(
            source["url"],
            dest,
            settings.max_file_bytes,
            settings.url_fetch_timeout_s,
            parse_allowlist(settings.url_allowlist),
        )
        return fetched.size
    if source["type"] == SOURCE_S3:
        check_source(source, settings)
        return _download_s3(source["bucket"], source["key"], dest, settings)
    message = f"Expected a source of type url or s3, got {source['type']!r}."
    raise InputError(message, code="invalid_source")


def _download_s3(bucket: str, key: str, dest: Path, settings: Settings) -> int:
    """Read s3://bucket/key with the service's credentials, after a HEAD checks its size."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region or None,
        config=Config(
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=settings.s3_connect_timeout_s,
            read_timeout=settings.s3_read_timeout_s,
        ),
    )
    where = f"s3://{bucket}/{key[:200]}"
    try:
        head = client.head_object(Bucket=bucket, Key=key)
        size = int(head.get("ContentLength", 0))
        if size > settings.max_file_bytes:
            message = (
                f"The object {where} has {size} bytes, over the maximum of "
                f"{settings.max_file_bytes} (OCRQ_MAX_FILE_BYTES)."
            )
            raise InputError(message, code="file_too_large", http_status=413)
        client.download_file(bucket, key, str(dest))
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if status in (403, 404):
            message = f"The object {where} does not exist or the service may not read it."
            raise InputError(message, code="s3_object_not_found") from exc
        message = f"Reading {where} failed with HTTP {status}."
        raise TransientError(message, code="s3_read_failed") from exc
    except BotoCoreError as exc:
        message = f"Reading {where} failed: {type(exc).__name__}."
        raise TransientError(message, code="s3_read_failed") from exc
    return dest.stat().st_size

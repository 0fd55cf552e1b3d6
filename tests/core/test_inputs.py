"""core.inputs: source parsing, the intake checks of URL and S3 sources, decrypted PDF copies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pypdfium2 as pdfium
import pytest

from core.documents import Limits
from core.errors import InputError
from core.inputs import check_source, parse_source, prepare_upload
from core.settings import Settings

PASSWORD = "password"


def test_parse_source_reads_url_and_s3() -> None:
    assert parse_source({"url": "https://example.org/a.pdf"}) == {
        "type": "url",
        "url": "https://example.org/a.pdf",
    }
    assert parse_source({"s3": {"bucket": "in", "key": "a/b.png"}}) == {
        "type": "s3",
        "bucket": "in",
        "key": "a/b.png",
    }


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({}, "invalid_source"),
        ({"url": "https://a.example/x", "s3": {"bucket": "b", "key": "k"}}, "invalid_source"),
        ({"url": 3}, "invalid_url"),
        ({"s3": {"bucket": "b"}}, "invalid_s3_location"),
        ({"s3": "s3://b/k"}, "invalid_s3_location"),
    ],
)
def test_parse_source_rejects_malformed_body(body: dict[str, object], code: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_source(body)
    assert caught.value.code == code


def test_check_source_refuses_bucket_outside_allowlist(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(s3_input_buckets="inputs, scans")
    check_source({"type": "s3", "bucket": "scans", "key": "k"}, settings)

    with pytest.raises(InputError) as caught:
        check_source({"type": "s3", "bucket": "private", "key": "k"}, settings)
    assert caught.value.code == "bucket_not_allowed"
    assert "OCRQ_S3_INPUT_BUCKETS" in caught.value.message


def test_check_source_refuses_metadata_address(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(InputError) as caught:
        check_source({"type": "url", "url": "http://169.254.169.254/latest"}, make_settings())
    assert caught.value.code == "url_not_allowed"


def test_prepare_upload_stores_password_pdf_decrypted(
    corpus_dir: Path, tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    limits = Limits.from_settings(make_settings())

    prepared = prepare_upload(corpus_dir / "skew-encrypted.pdf", limits, PASSWORD)

    assert prepared.source == {"type": "upload", "pdf_decrypted": True}
    assert prepared.data is not None
    copy = tmp_path / "copy.pdf"
    copy.write_bytes(prepared.data)
    # The copy opens with no password at all and keeps the page.
    document = pdfium.PdfDocument(str(copy))
    assert len(document) == prepared.page_count == 1
    document.close()
    with pytest.raises(pdfium.PdfiumError):
        pdfium.PdfDocument(str(corpus_dir / "skew-encrypted.pdf"))


def test_prepare_upload_keeps_unencrypted_file_as_is(
    corpus_dir: Path, make_settings: Callable[..., Settings]
) -> None:
    limits = Limits.from_settings(make_settings())

    prepared = prepare_upload(corpus_dir / "skew.pdf", limits, PASSWORD)

    assert prepared.source == {"type": "upload"}
    assert prepared.data is None
    assert prepared.path == corpus_dir / "skew.pdf"

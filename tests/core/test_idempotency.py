"""Tests for core.idempotency: request fingerprints and key validation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from core.errors import InputError
from core.idempotency import request_fingerprint, validate_idempotency_key

FILE_SHA = "a" * 64


DEFAULT_FIELDS: dict[str, Any] = {
    "mode": "gundam",
    "task": "markdown",
    "metadata": {"b": 1, "a": [1, 2]},
}


def make_fingerprint(
    method: str = "POST",
    path: str = "/v1/jobs",
    fields: Mapping[str, Any] | None = None,
    file_sha256: str | None = FILE_SHA,
) -> str:
    return request_fingerprint(
        method, path, DEFAULT_FIELDS if fields is None else fields, file_sha256
    )


def test_request_fingerprint_is_sha256_hex() -> None:
    fingerprint = make_fingerprint()

    assert len(fingerprint) == 64
    assert int(fingerprint, 16) >= 0


def test_request_fingerprint_ignores_field_order() -> None:
    reordered = {"metadata": {"a": [1, 2], "b": 1}, "task": "markdown", "mode": "gundam"}

    assert make_fingerprint(fields=reordered) == make_fingerprint()


def test_request_fingerprint_ignores_method_case_and_digest_case() -> None:
    assert make_fingerprint(method="post", file_sha256=FILE_SHA.upper()) == make_fingerprint()


def test_request_fingerprint_treats_none_field_as_omitted() -> None:
    assert make_fingerprint(fields=DEFAULT_FIELDS | {"webhook_url": None}) == make_fingerprint()


@pytest.mark.parametrize(
    "change",
    [
        {"method": "PUT"},
        {"path": "/v1/batches"},
        {"file_sha256": "b" * 64},
        {"file_sha256": None},
        {"fields": {"mode": "tiny", "task": "markdown", "metadata": {"b": 1, "a": [1, 2]}}},
        {"fields": {"mode": "gundam", "task": "markdown", "metadata": {"b": 1, "a": [2, 1]}}},
        {"fields": {"mode": "gundam", "task": "markdown", "metadata": {"b": "1", "a": [1, 2]}}},
        {"fields": {"mode": "gundam", "task": "markdown"}},
    ],
)
def test_request_fingerprint_differs_for_different_request(change: dict[str, Any]) -> None:
    assert make_fingerprint(**change) != make_fingerprint()


def test_request_fingerprint_separates_field_from_file_digest() -> None:
    """A field that looks like the digest must not collide with the digest itself."""
    with_field = make_fingerprint(fields={"file_sha256": FILE_SHA}, file_sha256=None)
    with_digest = make_fingerprint(fields={}, file_sha256=FILE_SHA)

    assert with_field != with_digest


def test_request_fingerprint_rejects_nan() -> None:
    with pytest.raises(ValueError):
        make_fingerprint(fields={"threshold": float("nan")})


def test_request_fingerprint_rejects_non_json_value() -> None:
    with pytest.raises(TypeError):
        make_fingerprint(fields={"raw": b"bytes"})


@pytest.mark.parametrize("key", ["k", "order-42:retry", "x" * 255, "a b"])
def test_validate_idempotency_key_accepts_printable_ascii(key: str) -> None:
    assert validate_idempotency_key(key) == key


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "line\nbreak", "tab\t"])
def test_validate_idempotency_key_rejects_invalid(key: str) -> None:
    with pytest.raises(InputError) as caught:
        validate_idempotency_key(key)

    assert caught.value.code == "invalid_idempotency_key"

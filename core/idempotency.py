"""Idempotency keys: tell a retried request from a different request that reuses a key.

The API stores, with each Idempotency-Key, the fingerprint of the request that first used it. A
later request with the same key and the same fingerprint gets the original response, and one with a
different fingerprint is rejected with 409 (ConflictError).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from core.errors import InputError

IDEMPOTENCY_KEY_MAX_LENGTH = 255
_HASH_CHUNK_BYTES = 1024 * 1024


def request_fingerprint(
    method: str, path: str, fields: Mapping[str, Any], file_sha256: str | None
) -> str:
    """Return a SHA-256 hex digest of the request's method, path, fields and file digest.

    The digest covers canonical JSON (sorted keys, no whitespace), so field order cannot change
    it.
    Fields whose value is None are dropped, so an omitted optional field equals an explicit null.
    Values must be JSON types. A TypeError or ValueError is raised for others, including NaN.
    """
    canonical_fields = {name: value for name, value in fields.items() if value is not None}
    document = {
        "method": method.upper(),
        "path": path,
        "fields": canonical_fields,
        "file_sha256": file_sha256.lower() if file_sha256 is not None else None,
    }
    text = json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(text.encode()).hexdigest()


def validate_idempotency_key(key: str) -> str:
    """Return the key if it is 1-255 printable ASCII characters; raise InputError otherwise."""
    if (
        not key
        or len(key) > IDEMPOTENCY_KEY_MAX_LENGTH
        or not key.isascii()
        or not key.isprintable()
    ):
        message = (
            f"Idempotency-Key must be 1-{IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters, "
            f"got {len(key)} characters"
        )
        raise InputError(message, code="invalid_idempotency_key")
    return key


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()

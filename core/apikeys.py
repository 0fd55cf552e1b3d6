"""API keys: generation, hashing, verification and the Authorization header.

A key is `ocrq_` followed by 43 URL-safe base64 characters (32 random bytes). Its first
KEY_ID_LENGTH characters are the key id: stored in clear, unique, used to look the key up and shown
in listings. Only the SHA-256 hex digest of the whole key is stored.

SHA-256 rather than a slow password hash (bcrypt, scrypt, Argon2) is deliberate. Slow hashes exist
to make guessing low-entropy passwords expensive, but a 256-bit random key cannot be guessed at
any hash speed, and a slow hash on every request would cost CPU and latency for no gain.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from typing import NamedTuple

KEY_PREFIX = "ocrq_"
KEY_RANDOM_BYTES = 32
KEY_ID_LENGTH = len(KEY_PREFIX) + 8
_KEY_PATTERN = re.compile(r"ocrq_[A-Za-z0-9_-]{43}")


class NewApiKey(NamedTuple):
    """A new key. Show plaintext to the user once, and store only key_id and key_hash."""

    plaintext: str
    key_id: str
    key_hash: str


def generate_api_key() -> NewApiKey:
    """Generate a random API key with its key id and hash."""
    plaintext = KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)
    return NewApiKey(plaintext, key_id_of(plaintext), hash_api_key(plaintext))


def hash_api_key(plaintext: str) -> str:
    """Return the SHA-256 hex digest stored for a key."""
    return hashlib.sha256(plaintext.encode()).hexdigest()


def verify_api_key(plaintext: str, stored_hash: str) -> bool:
    """Return True when plaintext hashes to stored_hash, compared in constant time."""
    return hmac.compare_digest(hash_api_key(plaintext).encode(), stored_hash.encode())


def is_well_formed(plaintext: str) -> bool:
    """Return True when plaintext has the shape of an ocrq key, so bad ones skip the lookup."""
    return _KEY_PATTERN.fullmatch(plaintext) is not None


def key_id_of(plaintext: str) -> str:
    """Return the key id (the clear prefix) of a key."""
    return plaintext[:KEY_ID_LENGTH]


def parse_bearer(header: str | None) -> str | None:
    """Return the token of an `Authorization: Bearer <token>` header, or None.

    None means the header is absent or malformed. The scheme is matched case-insensitively
    (RFC 7235), and a token containing whitespace is malformed.
    """
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(char.isspace() for char in token):
        return None
    return token

"""Tests for core.apikeys: key generation, hashing, verification and bearer parsing."""

from __future__ import annotations

import hashlib

import pytest

from core.apikeys import (
    KEY_ID_LENGTH,
    generate_api_key,
    hash_api_key,
    is_well_formed,
    key_id_of,
    parse_bearer,
    verify_api_key,
)


def test_generate_api_key_returns_prefixed_plaintext() -> None:
    plaintext, key_id, key_hash = generate_api_key()

    assert plaintext.startswith("ocrq_")
    assert len(plaintext) == len("ocrq_") + 43
    assert is_well_formed(plaintext)


def test_generate_api_key_id_is_plaintext_prefix() -> None:
    key = generate_api_key()

    assert key.key_id == key.plaintext[:KEY_ID_LENGTH]
    assert key.key_id.startswith("ocrq_")
    assert key_id_of(key.plaintext) == key.key_id


def test_generate_api_key_hash_is_sha256_of_plaintext() -> None:
    key = generate_api_key()

    assert key.key_hash == hashlib.sha256(key.plaintext.encode()).hexdigest()
    assert key.plaintext not in key.key_hash


def test_generate_api_key_is_random() -> None:
    keys = {generate_api_key().plaintext for _ in range(50)}

    assert len(keys) == 50


def test_verify_api_key_accepts_matching_key() -> None:
    key = generate_api_key()

    assert verify_api_key(key.plaintext, key.key_hash)


def test_verify_api_key_rejects_other_key() -> None:
    key, other = generate_api_key(), generate_api_key()

    assert not verify_api_key(other.plaintext, key.key_hash)


def test_verify_api_key_rejects_last_character_change() -> None:
    key = generate_api_key()
    last = "A" if key.plaintext[-1] != "A" else "B"

    assert not verify_api_key(key.plaintext[:-1] + last, key.key_hash)


def test_hash_api_key_is_deterministic() -> None:
    assert hash_api_key("ocrq_abc") == hash_api_key("ocrq_abc")
    assert hash_api_key("ocrq_abc") != hash_api_key("ocrq_abd")


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "ocrq_",
        "ocrq_short",
        "sk_" + "a" * 43,
        "ocrq_" + "a" * 42,
        "ocrq_" + "a" * 44,
        "ocrq_" + "a" * 42 + "=",
    ],
)
def test_is_well_formed_rejects_other_shapes(candidate: str) -> None:
    assert not is_well_formed(candidate)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer ocrq_abc", "ocrq_abc"),
        ("bearer ocrq_abc", "ocrq_abc"),
        ("BEARER   ocrq_abc  ", "ocrq_abc"),
        ("  Bearer ocrq_abc", "ocrq_abc"),
    ],
)
def test_parse_bearer_returns_token(header: str, token: str) -> None:
    assert parse_bearer(header) == token


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "ocrq_abc",
        "Bearer a b",
        "Token ocrq_abc",
    ],
)
def test_parse_bearer_returns_none_for_missing_or_malformed(header: str | None) -> None:
    assert parse_bearer(header) is None

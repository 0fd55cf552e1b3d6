"""JSON request bodies that name a document by URL or S3 location instead of uploading it.

POST /v1/jobs takes {"url": ...} or {"s3": {"bucket", "key"}} with the job options beside
it; POST /v1/batches takes {"sources": [...], "options": {...}}. The body is read with a size
cap, and option values are turned into the strings the multipart form would carry, so both
kinds of request go through the same option checks.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from api.errors import ApiError
from core.errors import InputError
from core.inputs import SOURCE_S3, SOURCE_URL

# A JSON body names documents but never contains one, so a small cap is enough: a batch of
# 1000 URLs of 2048 characters fits.
MAX_JSON_BODY_BYTES = 4 * 1024 * 1024
SOURCE_KEYS = (SOURCE_URL, SOURCE_S3)
# Deeper JSON is refused: no option needs it, and json.loads recurses once per level.
MAX_JSON_DEPTH = 32


def is_json_request(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


async def read_json_object(request: Request) -> dict[str, Any]:
    """Return the request's JSON object; raise 413 past MAX_JSON_BODY_BYTES, 422 when malformed."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY_BYTES:
            message = f"The JSON body is larger than the maximum of {MAX_JSON_BODY_BYTES} bytes."
            raise ApiError(413, "body_too_large", message)
    try:
        document = load_json(bytes(body))
    except ValueError as exc:
        raise ApiError(422, "invalid_json", f"The request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        message = "Expected the request body to be a JSON object."
        raise ApiError(422, "invalid_json", message)
    return document


def load_json(text: str | bytes) -> Any:
    """Parse JSON nested at most MAX_JSON_DEPTH deep; raise ValueError when malformed or deeper.

    json.loads recurses once per level, so a few thousand nested brackets raise RecursionError;
    that is reported as too deep like any document past the limit.
    """
    too_deep = f"it is nested more than {MAX_JSON_DEPTH} levels deep"
    try:
        document = json.loads(text)
    except RecursionError:
        raise ValueError(too_deep) from None
    if _nesting_depth(document) > MAX_JSON_DEPTH:
        raise ValueError(too_deep)
    return document


def _nesting_depth(document: Any) -> int:
    """Return how many arrays and objects deep a parsed JSON document nests, without recursing."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(document, 0)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        deepest = max(deepest, depth + 1)
        pending.extend((child, depth + 1) for child in children)
    return deepest


def split_job_body(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Split a JSON job body into its source part and its options as form-field strings."""
    source_part = {name: body[name] for name in SOURCE_KEYS if name in body}
    options = {name: value for name, value in body.items() if name not in SOURCE_KEYS}
    return source_part, option_fields(options)


def option_fields(options: dict[str, Any]) -> dict[str, str]:
    """Turn JSON option values into the strings a multipart form would send.

    metadata is encoded as JSON (the form checks it is an object); every other option must be a
    string.
    """
    fields: dict[str, str] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name == "metadata":
            fields[name] = json.dumps(value)
            continue
        if not isinstance(value, str):
            message = f"Expected option {name[:64]!r} to be a string, got {type(value).__name__}."
            raise InputError(message, code="invalid_option")
        fields[name] = value
    return fields

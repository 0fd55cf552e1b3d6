"""The OpenAPI document: FastAPI's, completed with the responses and headers every route shares.

Routes declare what is theirs (404 for an unknown id, 409, 413, 415, their bodies). This module
adds what all /v1 routes have in common, so no route can forget it:

- 401 with WWW-Authenticate (a missing, invalid or revoked API key),
- 422 and 500 with the error body,
- 503 with Retry-After (the database, storage or broker is unreachable for now),
- 400 on routes with a body that cannot be parsed, and 415 on multipart routes for a body of
  another content type,
- the Idempotency-Key request header on POST routes that honour it, Location on the responses
  that create a resource, and Retry-After on the polling reads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from api.auth import AUTH_RESPONSES

API_PREFIX = "/v1"
ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}

RETRY_AFTER_HEADER = {
    "description": "seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 0},
}
LOCATION_HEADER = {
    "description": "the path of the created (or replayed) resource",
    "schema": {"type": "string"},
}
# Status responses that create (or replay) a resource, keyed by (method, path).
_CREATED_RESPONSES = {
    ("post", "/v1/jobs"): ("200", "202"),
    ("post", "/v1/batches"): ("200", "202", "201"),
}
# Reads a client polls; while the job or batch runs they carry Retry-After.
_POLLED_READS = {("get", "/v1/jobs/{job_id}"), ("get", "/v1/batches/{batch_id}")}

_COMMON_ERRORS: dict[str, dict[str, Any]] = {
    "401": {
        "description": AUTH_RESPONSES[401]["description"],
        "headers": AUTH_RESPONSES[401]["headers"],
    },
    "422": {"description": "invalid request: a parameter, header or body that does not validate"},
    "500": {"description": "internal error; the request id in the logs identifies it"},
    "503": {
        "description": "a dependency (database, storage, broker) is unreachable for now",
        "headers": {"Retry-After": RETRY_AFTER_HEADER},
    },
}

# Any route with a body: the body cannot be parsed at all (broken JSON or multipart).
_MALFORMED_BODY = {"description": "malformed body: not parseable as its content type"}
_UNSUPPORTED_BODY = {"description": "a body of a content type other than those documented"}


def install_openapi(app: FastAPI) -> None:
    """Make app.openapi() return FastAPI's document completed by complete_openapi()."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    completed: list[dict[str, Any]] = []

    def openapi() -> dict[str, Any]:
        if not completed:
            completed.append(complete_openapi(generate()))
        return completed[0]

    app.openapi = openapi  # type: ignore[method-assign]


def complete_openapi(document: dict[str, Any]) -> dict[str, Any]:
    """Add the shared error responses and headers to every operation; return the document."""
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            if path.startswith(API_PREFIX):
                for status, template in _COMMON_ERRORS.items():
                    _add_error(responses, status, template)
            body_types = operation.get("requestBody", {}).get("content", {})
            if body_types:
                _add_error(responses, "400", _MALFORMED_BODY)
            if "multipart/form-data" in body_types:
                # These routes read the body themselves and check its content type first.
                _add_error(responses, "415", _UNSUPPORTED_BODY)
            else:
                _add_error(responses, "500", _COMMON_ERRORS["500"])
                if "503" in responses:
                    responses["503"].setdefault("headers", {})["Retry-After"] = RETRY_AFTER_HEADER
            _fix_error_media_types(responses)

            for status in _CREATED_RESPONSES.get((method, path), ()):
                if status in responses:
                    responses[status].setdefault("headers", {})["Location"] = LOCATION_HEADER
            if (method, path) in _POLLED_READS and "200" in responses:
                headers = responses["200"].setdefault("headers", {})
                headers["Retry-After"] = {
                    **RETRY_AFTER_HEADER,
                    "description": "while queued or running: seconds until polling is useful",
                }
    return document


def _add_error(responses: dict[str, Any], status: str, template: dict[str, Any]) -> None:
    """Give `responses[status]` the error body and the template's headers, keeping its text."""
    response = responses.setdefault(status, {"description": template["description"]})
    response["content"] = {"application/json": {"schema": ERROR_BODY_REF}}
    for name, header in template.get("headers", {}).items():
        response.setdefault("headers", {}).setdefault(name, header)


def _fix_error_media_types(responses: dict[str, Any]) -> None:
    """Send error bodies as JSON even on routes whose success is text (FastAPI copies its type)."""
    for status, response in responses.items():
        content = response.get("content", {})
        if status[0] in "45" and any(
            media.get("schema") == ERROR_BODY_REF for media in content.values()
        ):
            response["content"] = {"application/json": {"schema": ERROR_BODY_REF}}

"""The OpenAPI document: valid, and every route documents its errors, headers and bodies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from api.app import create_app
from core.settings import Settings

ERROR_BODY_REF = "#/components/schemas/ErrorBody"
# Every route under /v1 can return these, whatever it does.
COMMON_ERRORS = ("401", "422", "500", "503")
# Path parameters naming a resource; a route with one returns 404 for an unknown id.
ID_PARAMETERS = {"job_id", "batch_id", "delivery_id", "endpoint_id", "key_id", "name", "page_index"}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir: Path = tmp_path_factory.mktemp("openapi")
    app = create_app(Settings(data_dir=data_dir))
    return app.openapi()


def operations(document: dict[str, Any], prefix: str = "/v1") -> list[tuple[str, str, Any]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        if path.startswith(prefix)
        for method, operation in methods.items()
    ]


def error_schema(response: dict[str, Any]) -> str | None:
    schema: dict[str, str] = (
        response.get("content", {}).get("application/json", {}).get("schema", {})
    )
    return schema.get("$ref")


def test_document_is_valid_openapi(document: dict[str, Any]) -> None:
    validate(document)


def test_every_route_lists_common_errors_with_error_body(document: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path} {status}"
        for method, path, operation in operations(document)
        for status in COMMON_ERRORS
        if error_schema(operation["responses"].get(status, {})) != ERROR_BODY_REF
    ]
    assert missing == []


def test_every_error_response_uses_error_body(document: dict[str, Any]) -> None:
    """Every 4xx and 5xx is the JSON error body, even on text routes; /readyz sends its report."""
    wrong = [
        f"{method.upper()} {path} {status}"
        for method, path, operation in operations(document, prefix="/")
        for status, response in operation["responses"].items()
        if status[0] in "45" and error_schema(response) != ERROR_BODY_REF
    ]
    assert wrong == ["GET /readyz 503"]


def test_routes_with_an_id_list_404(document: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path}"
        for method, path, operation in operations(document)
        if {parameter["name"] for parameter in operation.get("parameters", [])} & ID_PARAMETERS
        and "404" not in operation["responses"]
    ]
    assert missing == []


def test_auth_and_retry_headers_are_documented(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        responses = operation["responses"]
        assert "WWW-Authenticate" in responses["401"]["headers"], f"{method} {path}"
        assert "Retry-After" in responses["503"]["headers"], f"{method} {path}"
    assert document["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"


def test_create_job_documents_bodies_headers_and_errors(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/jobs"]["post"]
    responses = operation["responses"]
    headers = {
        parameter["name"].lower()
        for parameter in operation["parameters"]
        if parameter["in"] == "header"
    }

    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert "idempotency-key" in headers
    for status in ("409", "413", "415", "422"):
        assert error_schema(responses[status]) == ERROR_BODY_REF, status
    assert "Location" in responses["202"]["headers"]
    assert "Location" in responses["200"]["headers"]


def test_polled_job_read_documents_retry_after(document: dict[str, Any]) -> None:
    response = document["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]

    assert "Retry-After" in response["headers"]


def test_result_documents_links_variant(document: dict[str, Any]) -> None:
    operation = document["paths"]["/v1/jobs/{job_id}/result"]["get"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]

    assert "links" in {parameter["name"] for parameter in operation["parameters"]}
    assert {"$ref": "#/components/schemas/JobResultLinks"} in schema["anyOf"]
    assert "409" in operation["responses"]


def test_multipart_routes_list_415_and_400(document: dict[str, Any]) -> None:
    for _method, path, operation in operations(document):
        if "multipart/form-data" not in operation.get("requestBody", {}).get("content", {}):
            continue
        assert error_schema(operation["responses"].get("415", {})) == ERROR_BODY_REF, path
        assert error_schema(operation["responses"].get("400", {})) == ERROR_BODY_REF, path


def test_readiness_failure_documents_retry_after(document: dict[str, Any]) -> None:
    response = document["paths"]["/readyz"]["get"]["responses"]["503"]

    assert "Retry-After" in response["headers"]

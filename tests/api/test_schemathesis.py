"""Property-based run of the whole API from its OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid, authenticated as one tenant, on
PostgreSQL, moto S3 and a Redis queue that no worker reads. A response must never be a 5xx, and its
status, content type, headers and body must match the document. URL hosts resolve to 127.0.0.1
(allow-listed) so the run never looks up or reaches another host.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from core import ssrf
from core.jobs import JobService
from tests.worker.fakes import FakeEngine
from worker.context import PipelineContext
from worker.pipeline import process_job

pytestmark = pytest.mark.services

# Examples per operation; with ~20 operations this keeps the run under a minute.
MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def api_client(
    make_client: Callable[..., TestClient],
    monkeypatch: pytest.MonkeyPatch,
) -> TestClient:
    monkeypatch.setattr(ssrf, "_getaddrinfo", lambda _host, _port: ["127.0.0.1"])
    return make_client(url_allowlist="127.0.0.1", raise_server_exceptions=False)


def finished_job(client: TestClient, corpus_dir: Path) -> str:
    """Submit a page and run it with a fake engine that draws one figure; return the job id."""
    path = corpus_dir / "phototest.tif"
    with path.open("rb") as handle:
        job_id: str = client.post("/v1/jobs", files={"file": (path.name, handle)}).json()["id"]
    service: JobService = client.app.state.job_service  # type: ignore[attr-defined]
    engine = FakeEngine()
    engine.figure_pages = {0}
    context = PipelineContext(service.settings, service.database, service.storage, lambda _: engine)
    process_job(job_id, context)
    return job_id


def submitted_batch(client: TestClient, corpus_dir: Path) -> str:
    """Submit a one-document batch (left queued: no worker reads the queue); return its id."""
    path = corpus_dir / "phototest.tif"
    with path.open("rb") as handle:
        response = client.post("/v1/batches", files=[("file", (path.name, handle))])
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    return batch_id


def check_operation(
    operation: Any, mode: GenerationMode, authorization: str, **fixed: Any
) -> str | None:
    """Run generated cases of one operation; return the first failure's report, or None.

    `fixed` contains as_strategy's fixed parts (path_parameters=...), e.g. a real job id.
    """

    @given(case=operation.as_strategy(generation_mode=mode, **fixed))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(headers={"Authorization": authorization}, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        return None  # no invalid request exists: the operation takes no input
    except (Exception, BaseExceptionGroup) as exc:  # check failures, with their operation
        return f"{operation.label} ({mode.value}, {fixed or 'generated ids'}): {exc}"
    return None


def test_api_answers_without_5xx_and_as_documented(
    api_client: TestClient, corpus_dir: Path
) -> None:
    """Each operation with valid and invalid requests, then with the ids of a real job and batch.

    Every failure is listed at the end. DELETEs go last, so the real job lives through the rest.
    """
    schema = schemathesis.openapi.from_asgi("/openapi.json", api_client.app)
    authorization = api_client.headers["Authorization"]
    real_ids = {
        "job_id": finished_job(api_client, corpus_dir),
        "batch_id": submitted_batch(api_client, corpus_dir),
    }
    operations = sorted(
        (result.ok() for result in schema.get_all_operations()),
        key=lambda operation: operation.method.upper() == "DELETE",
    )

    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures.append(check_operation(operation, mode, authorization))
        for name, real_id in real_ids.items():
            if f"{{{name}}}" in operation.path:
                real = {"path_parameters": {name: real_id}}
                failures.append(
                    check_operation(operation, GenerationMode.POSITIVE, authorization, **real)
                )

    reports = [failure for failure in failures if failure]
    assert not reports, "\n\n".join(reports)

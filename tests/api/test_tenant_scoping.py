"""Every route that takes a job or batch id hides other tenants' resources (404, like unknown ids).

The routes come from the OpenAPI document, so a route added later is covered without a new test.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.jobs import JobService
from tests.worker.fakes import FakeEngine
from worker.context import PipelineContext
from worker.pipeline import process_job

pytestmark = pytest.mark.services

# Values for the other path parameters; they would exist for the owner.
OTHER_PARAMETERS = {"name": "0_0.jpg", "page_index": "0", "delivery_id": "msg_0"}


def finished_job(client: TestClient, path: Path) -> str:
    with path.open("rb") as handle:
        job_id: str = client.post("/v1/jobs", files={"file": (path.name, handle)}).json()["id"]
    service: JobService = client.app.state.job_service  # type: ignore[attr-defined]
    engine = FakeEngine()
    engine.figure_pages = {0}
    context = PipelineContext(service.settings, service.database, service.storage, lambda _: engine)
    process_job(job_id, context)
    return job_id


def scoped_operations(document: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (method, path) of every operation with a job or batch id, DELETEs last."""
    found = [
        (method.upper(), path)
        for path, methods in document["paths"].items()
        for method in methods
        if "{job_id}" in path or "{batch_id}" in path
    ]
    return sorted(found, key=lambda operation: operation[0] == "DELETE")


def test_other_tenant_gets_404_on_every_id_route(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    owner, other = make_client(), make_client()
    job_id = finished_job(owner, corpus_dir / "phototest.tif")
    with (corpus_dir / "phototest.tif").open("rb") as handle:
        batch = owner.post("/v1/batches", files=[("file", ("a.tif", handle))]).json()
    ids = {"job_id": job_id, "batch_id": batch["id"], **OTHER_PARAMETERS}
    operations = scoped_operations(owner.get("/openapi.json").json())

    answers = {}
    for method, path in operations:
        url = path.format(**ids)
        response = other.request(method, url)
        answers[f"{method} {path}"] = (response.status_code, response.json()["detail"]["code"])

    assert len(operations) >= 8
    for operation, (status, code) in answers.items():
        assert status == 404, operation
        assert code.endswith("_not_found"), operation
    assert owner.get(f"/v1/jobs/{job_id}").status_code == 200
    assert owner.get(f"/v1/jobs/{job_id}/figures/0_0.jpg").status_code == 200
    assert owner.get(f"/v1/batches/{batch['id']}").json()["status"] != "canceled"

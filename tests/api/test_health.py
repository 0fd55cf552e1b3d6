"""Health, readiness, metrics, request ids and the error bodies of routes outside /v1/jobs."""

from __future__ import annotations

import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from structlog.testing import capture_logs

from api.app import create_app
from api.routes import health
from core.jobs import JobService
from core.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.services


def test_healthz_returns_ok(make_client: Callable[..., TestClient]) -> None:
    response = make_client().get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_readyz_checks_every_dependency(make_client: Callable[..., TestClient]) -> None:
    response = make_client().get("/readyz")

    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_names_unreachable_broker(make_client: Callable[..., TestClient]) -> None:
    client = make_client(broker_url=f"redis://127.0.0.1:{free_port()}/0")

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["detail"]["code"] == "not_ready"
    assert "broker" in body["detail"]["message"]
    assert body["checks"]["broker"].startswith("failed")
    assert body["checks"]["database"] == "ok"
    assert response.headers["retry-after"].isdigit()


def test_readyz_names_unreachable_database(
    make_client: Callable[..., TestClient],
) -> None:
    port = free_port()
    client = make_client(database_url=f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("failed")
    assert response.json()["checks"]["storage"] == "ok"


def test_metrics_count_jobs_and_requests(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client()
    queued_before = _sample(client.get("/metrics").text, 'ocrq_jobs{status="queued"}')
    with (corpus_dir / "phototest.tif").open("rb") as handle:
        assert client.post("/v1/jobs", files={"file": handle}).status_code == 202
    client.get(f"/v1/jobs/{uuid.uuid4()}")

    response = client.get("/metrics")

    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    assert _sample(text, 'ocrq_jobs{status="queued"}') == queued_before + 1
    assert _sample(text, 'ocrq_jobs{status="succeeded"}') is not None
    assert (
        _sample(text, 'ocrq_http_requests_total{method="POST",route="/v1/jobs",status="202"}') == 1
    )
    get_job = 'ocrq_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"}'
    assert _sample(text, get_job) == 1


def test_request_id_is_echoed_or_generated(make_client: Callable[..., TestClient]) -> None:
    client = make_client()

    given = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    generated = client.get("/healthz")
    unsafe = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})

    assert given.headers["x-request-id"] == "abc-123"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert unsafe.headers["x-request-id"] != "bad id\twith spaces"


def test_request_id_is_bound_in_logs(make_client: Callable[..., TestClient]) -> None:
    from structlog.contextvars import merge_contextvars

    client = make_client()
    with capture_logs(processors=[merge_contextvars]) as logs:
        client.get(f"/v1/jobs/{uuid.uuid4()}", headers={"X-Request-ID": "req-42"})

    finished = [entry for entry in logs if entry["event"] == "request.finished"]
    assert finished
    assert finished[0]["request_id"] == "req-42"
    assert finished[0]["status"] == 404
    assert finished[0]["route"] == "/v1/jobs/{job_id}"


def test_unknown_route_returns_error_body(make_client: Callable[..., TestClient]) -> None:
    response = make_client().get("/v1/nothing-here")

    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "not_found"
    assert "/v1/nothing-here" in response.json()["detail"]["message"]


def test_wrong_method_returns_error_body(make_client: Callable[..., TestClient]) -> None:
    response = make_client().put("/v1/jobs")

    assert response.status_code == 405
    assert response.json()["detail"]["code"] == "method_not_allowed"


def test_validation_error_returns_error_body(make_client: Callable[..., TestClient]) -> None:
    """FastAPI's own validation (here an over-long header) uses the same error body."""
    headers = {"Idempotency-Key": "k" * 300}
    response = make_client().post("/v1/jobs", files={"file": b"x"}, headers=headers)

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "invalid_request"
    assert "idempotency-key" in response.json()["detail"]["message"]


class FailingJobService(JobService):
    """A job service whose reads fail with an unexpected exception."""

    def get_job(self, job_id: str, **_scope: object) -> object:  # type: ignore[override]
        raise RuntimeError("secret connection string postgres://user:pw@db")


@pytest.mark.parametrize("debug", [False, True])
def test_internal_error_hides_exception_text(
    api_settings: Callable[..., Settings], debug: bool
) -> None:
    settings = api_settings(debug=debug, auth_required=False)
    app = create_app(settings, job_service=FailingJobService.open(settings))
    client = TestClient(app, raise_server_exceptions=False)

    with capture_logs() as logs:
        response = client.get(f"/v1/jobs/{uuid.uuid4()}")

    assert response.status_code == 500
    detail = response.json()["detail"]
    assert detail["code"] == "internal_error"
    assert ("secret connection string" in detail["message"]) is debug
    failures = [entry for entry in logs if entry["event"] == "request.failed"]
    assert len(failures) == 1
    assert failures[0]["exc_info"] is True


def _sample(text: str, series: str) -> float | None:
    """Return the value of one series in Prometheus text, or None when it is absent."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_unreachable_storage_returns_503_with_retry_after(
    make_client: Callable[..., TestClient], corpus_dir: Path
) -> None:
    client = make_client(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")

    with (corpus_dir / "phototest.tif").open("rb") as handle:
        response = client.post("/v1/jobs", files={"file": handle})

    assert response.status_code == 503
    assert response.json()["detail"]["code"] == "transient_error"
    assert response.headers["retry-after"].isdigit()


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An http://127.0.0.1 URL whose server accepts connections and never responds."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def test_readyz_answers_503_naming_storage_that_never_answers(
    make_client: Callable[..., TestClient], silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(health, "READY_CHECK_TIMEOUT_S", 0.5)
    client = make_client(s3_endpoint_url=silent_server)

    started = time.monotonic()
    response = client.get("/readyz")
    elapsed = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert "storage" in response.json()["detail"]["message"]
    assert response.json()["checks"]["storage"].startswith("failed")
    assert response.json()["checks"]["database"] == "ok"
    assert elapsed < 5


def test_submit_to_unresponsive_storage_is_503(
    make_client: Callable[..., TestClient], silent_server: str, corpus_dir: Path
) -> None:
    client = make_client(s3_endpoint_url=silent_server, s3_read_timeout_s=0.3)

    started = time.monotonic()
    with (corpus_dir / "phototest.tif").open("rb") as handle:
        response = client.post("/v1/jobs", files={"file": handle})
    elapsed = time.monotonic() - started

    assert response.status_code == 503, response.text
    assert response.json()["detail"]["code"] == "transient_error"
    assert response.headers["retry-after"].isdigit()
    assert elapsed < 10

"""OcrqClient: requests it sends, error mapping, and waiting for a job (httpx.MockTransport)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import ClientError, OcrqClient

BASE_URL = "http://ocrq.test"
JOB_ID = "6f1c2a5e-0000-4000-8000-000000000001"


def make_job(**overrides: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "id": JOB_ID,
        "status": "queued",
        "pages_total": 2,
        "pages_done": 0,
        "engine": "rapidocr",
        "mode": "gundam",
        "task": "markdown",
        "error": None,
    }
    job.update(overrides)
    return job


def make_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any) -> OcrqClient:
    return OcrqClient(BASE_URL, transport=httpx.MockTransport(handler), **kwargs)


def test_submit_sends_file_and_options(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=make_job())

    document = tmp_path / "page.png"
    document.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    client = make_client(handler, api_key="ocrq_secret")

    job = client.submit(
        document, mode="base", metadata={"customer": "acme"}, idempotency_key="key-1"
    )

    assert job["id"] == JOB_ID
    request = seen[0]
    assert (request.method, request.url.path) == ("POST", "/v1/jobs")
    assert request.headers["authorization"] == "Bearer ocrq_secret"
    assert request.headers["idempotency-key"] == "key-1"
    body = request.read()
    assert b'name="file"; filename="page.png"' in body
    assert b'name="mode"\r\n\r\nbase' in body
    assert json.dumps({"customer": "acme"}).encode() in body
    assert b'name="task"' not in body


def test_error_response_becomes_client_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        detail = {"code": "job_not_found", "message": "Job x was not found."}
        return httpx.Response(404, json={"detail": detail})

    with pytest.raises(ClientError) as caught:
        make_client(handler).get(JOB_ID)

    assert caught.value.code == "job_not_found"
    assert caught.value.message == "Job x was not found."
    assert caught.value.http_status == 404


def test_error_without_detail_keeps_status() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(502, text="<html>bad gateway</html>")

    with pytest.raises(ClientError) as caught:
        make_client(handler).get(JOB_ID)

    assert caught.value.code == "http_error"
    assert "502" in caught.value.message


def test_connection_failure_becomes_client_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ClientError) as caught:
        make_client(handler).get(JOB_ID)

    assert caught.value.code == "connection_failed"
    assert BASE_URL in caught.value.message


def test_submit_missing_file_becomes_client_error(tmp_path: Path) -> None:
    client = make_client(lambda request: httpx.Response(500))

    with pytest.raises(ClientError) as caught:
        client.submit(tmp_path / "absent.pdf")

    assert caught.value.code == "file_unreadable"


def test_wait_polls_until_final_status() -> None:
    states = iter(
        [
            make_job(status="queued"),
            make_job(status="running", pages_done=1),
            make_job(status="succeeded", pages_done=2),
        ]
    )
    client = make_client(lambda request: httpx.Response(200, json=next(states)))

    job = client.wait(JOB_ID, timeout_s=10, progress=True, poll_interval_s=0)

    assert job["status"] == "succeeded"
    assert job["pages_done"] == 2


def test_wait_times_out_on_unfinished_job() -> None:
    client = make_client(lambda request: httpx.Response(200, json=make_job(status="running")))

    with pytest.raises(ClientError) as caught:
        client.wait(JOB_ID, timeout_s=0, progress=False, poll_interval_s=0)

    assert caught.value.code == "wait_timed_out"
    assert "running" in caught.value.message


def test_cancel_of_finished_job_returns_none() -> None:
    client = make_client(lambda request: httpx.Response(204))

    assert client.cancel(JOB_ID) is None


def test_result_markdown_returns_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == f"/v1/jobs/{JOB_ID}/result.md"
        return httpx.Response(200, text="# Title\n", headers={"content-type": "text/markdown"})

    assert make_client(handler).result_markdown(JOB_ID) == "# Title\n"

"""OcrqClient's URL, S3 and batch calls against a mocked API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from client import ClientError, OcrqClient

BATCH_ID = "b1c2a5e0-0000-4000-8000-000000000001"


def make_client(handler: Callable[[httpx.Request], httpx.Response]) -> OcrqClient:
    return OcrqClient("http://ocrq.test", "ocrq_key", transport=httpx.MockTransport(handler))


def batch_body(status: str, finished: int, total: int = 3) -> dict[str, Any]:
    counts = {"queued": total - finished, "running": 0, "succeeded": finished}
    counts.update({"partial": 0, "failed": 0, "canceled": 0})
    return {"id": BATCH_ID, "status": status, "jobs_total": total, "counts": counts, "jobs": []}


def test_submit_url_posts_json_body_without_unset_options() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json={"id": "job", "status": "queued"})

    with make_client(handler) as client:
        client.submit_url("https://docs.example/a.pdf", mode="tiny", task=None)

    assert seen[0].url.path == "/v1/jobs"
    assert json.loads(seen[0].content) == {"url": "https://docs.example/a.pdf", "mode": "tiny"}


def test_submit_s3_names_bucket_and_key() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(202, json={"id": "job"})

    with make_client(handler) as client:
        client.submit_s3("inputs", "scans/a.png")

    assert seen == [{"s3": {"bucket": "inputs", "key": "scans/a.png"}}]


def test_create_batch_uploads_one_file_part_per_path(tmp_path: Path) -> None:
    paths = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in paths:
        path.write_bytes(b"\x89PNG" + path.name.encode())
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202, json=batch_body("running", 0, 2))

    with make_client(handler) as client:
        client.create_batch(paths, priority="low", idempotency_key="k1")

    body = seen[0].read()
    assert seen[0].headers["idempotency-key"] == "k1"
    assert body.count(b'name="file"') == 2
    assert b'name="priority"\r\n\r\nlow' in body


def test_create_batch_sends_sources_as_json() -> None:
    seen: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(202, json=batch_body("running", 0, 1))

    with make_client(handler) as client:
        client.create_batch([{"url": "https://docs.example/a.pdf"}], mode="tiny")

    assert seen == [
        {"sources": [{"url": "https://docs.example/a.pdf"}], "options": {"mode": "tiny"}}
    ]


def test_wait_batch_polls_until_the_batch_ends() -> None:
    answers = [batch_body("running", 1), batch_body("running", 2), batch_body("completed", 3)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0) if answers else batch_body("completed", 3))

    with make_client(handler) as client:
        ended = client.wait_batch(BATCH_ID, progress=True, poll_interval_s=0)

    assert ended["status"] == "completed"
    assert answers == []


def test_wait_batch_times_out_with_finished_count() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=batch_body("running", 1))

    with make_client(handler) as client, pytest.raises(ClientError) as caught:
        client.wait_batch(BATCH_ID, timeout_s=0, progress=False, poll_interval_s=0)

    assert caught.value.code == "wait_timed_out"
    assert "1 of 3" in caught.value.message


def test_wait_batch_returns_every_job_across_pages() -> None:
    pages = {
        None: ({"id": "job-1"}, "c2"),
        "c2": ({"id": "job-2"}, "c3"),
        "c3": ({"id": "job-3"}, None),
    }

    def handler(request: httpx.Request) -> httpx.Response:
        body = batch_body("completed", 3)
        if request.url.params.get("limit") != "1":
            job, next_cursor = pages[request.url.params.get("cursor")]
            body.update(jobs=[job], next_cursor=next_cursor)
        return httpx.Response(200, json=body)

    with make_client(handler) as client:
        ended = client.wait_batch(BATCH_ID, progress=False, poll_interval_s=0)

    assert [job["id"] for job in ended["jobs"]] == ["job-1", "job-2", "job-3"]
    assert ended["next_cursor"] is None

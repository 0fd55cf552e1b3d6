"""`ocrq batch submit` and `ocrq batch status` against a mocked API."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

import cli.client_cmds
from cli.main import cli as ocrq_cli
from client import OcrqClient
from core.settings import get_settings

BATCH_ID = "b1c2a5e0-0000-4000-8000-000000000001"


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def mock_api(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[..., httpx.Response]], None]:
    def install(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        def build(base_url: str, api_key: str | None = None) -> OcrqClient:
            return OcrqClient(base_url, api_key, transport=httpx.MockTransport(handler))

        monkeypatch.setattr(cli.client_cmds, "OcrqClient", build)

    return install


def batch(status: str, succeeded: int, failed: int = 0) -> dict[str, object]:
    counts = {"queued": 2 - succeeded - failed, "running": 0, "succeeded": succeeded}
    counts.update({"partial": 0, "failed": failed, "canceled": 0})
    return {"id": BATCH_ID, "status": status, "jobs_total": 2, "counts": counts, "jobs": []}


def test_batch_submit_wait_prints_ended_batch(
    mock_api: Callable[..., None], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [tmp_path / "a.png", tmp_path / "b.png"]
    for path in files:
        path.write_bytes(b"x")
    answers = [batch("running", 0), batch("running", 1), batch("completed", 2)]
    methods: list[str] = []

    # After the last poll the CLI reads every job of the batch, one per page here.
    job_pages = {
        None: {"jobs": [{"id": "job-a"}], "next_cursor": "c2"},
        "c2": {"jobs": [{"id": "job-b"}], "next_cursor": None},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        methods.append(request.method)
        if answers:
            return httpx.Response(202 if request.method == "POST" else 200, json=answers.pop(0))
        page = job_pages[request.url.params.get("cursor")]
        return httpx.Response(200, json={**batch("completed", 2), **page})

    mock_api(handler)
    monkeypatch.setattr("client.client.time.sleep", lambda _s: None)
    result = CliRunner().invoke(ocrq_cli, ["batch", "submit", *map(str, files), "--wait"])

    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["status"] == "completed"
    assert [job["id"] for job in printed["jobs"]] == ["job-a", "job-b"]
    assert methods == ["POST", "GET", "GET", "GET", "GET"]


def test_batch_submit_wait_exits_1_when_a_job_failed(
    mock_api: Callable[..., None], tmp_path: Path
) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(b"x")
    answers = [batch("running", 0), batch("completed", 1, failed=1)]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0) if answers else batch("completed", 1, 1))

    mock_api(handler)
    result = CliRunner().invoke(ocrq_cli, ["batch", "submit", str(path), "--wait"])

    assert result.exit_code == 1


def test_batch_status_passes_limit_and_cursor(mock_api: Callable[..., None]) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=batch("running", 1))

    mock_api(handler)
    result = CliRunner().invoke(
        ocrq_cli, ["batch", "status", BATCH_ID, "--limit", "5", "--cursor", "abc"]
    )

    assert result.exit_code == 0, result.output
    assert seen[0].url.path == f"/v1/batches/{BATCH_ID}"
    assert dict(seen[0].url.params) == {"limit": "5", "cursor": "abc"}

"""`ocrq submit`, `ocrq status` and `ocrq result` against a mocked API, and an unreachable one."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

import cli.client_cmds
from cli.main import cli as ocrq_cli
from client import OcrqClient
from core.settings import get_settings
from tests.conftest import free_port

JOB_ID = "6f1c2a5e-0000-4000-8000-000000000002"


@pytest.fixture(autouse=True)
def fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def mock_api(monkeypatch: pytest.MonkeyPatch) -> Callable[[Callable[..., httpx.Response]], None]:
    """Route the commands' client through a handler instead of the network."""

    def install(handler: Callable[[httpx.Request], httpx.Response]) -> None:
        def build(base_url: str, api_key: str | None = None) -> OcrqClient:
            return OcrqClient(base_url, api_key, transport=httpx.MockTransport(handler))

        monkeypatch.setattr(cli.client_cmds, "OcrqClient", build)

    return install


def job(status: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"id": JOB_ID, "status": status, "pages_total": 1, "pages_done": 0}
    body.update(overrides)
    return body


def test_status_prints_job_json(mock_api: Callable[..., None]) -> None:
    mock_api(lambda request: httpx.Response(200, json=job("running")))

    result = CliRunner().invoke(ocrq_cli, ["status", JOB_ID])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "running"


def test_status_sends_api_key_as_bearer(
    mock_api: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCRQ_API_KEY", "ocrq_from_environment")
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=job("running"))

    mock_api(handler)
    outcome = CliRunner().invoke(ocrq_cli, ["status", JOB_ID])

    assert outcome.exit_code == 0, outcome.output
    assert seen == ["Bearer ocrq_from_environment"]


def test_submit_wait_prints_markdown(mock_api: Callable[..., None], tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=job("queued"))
        if request.url.path.endswith("/result.md"):
            return httpx.Response(200, text="Hello page\n")
        return httpx.Response(200, json=job("succeeded", pages_done=1))

    document = tmp_path / "scan.png"
    document.write_bytes(b"\x89PNG\r\n\x1a\n")
    mock_api(handler)

    result = CliRunner().invoke(ocrq_cli, ["submit", "--wait", str(document)])

    assert result.exit_code == 0, result.output
    assert result.output == "Hello page\n"


def test_submit_wait_reports_failed_job(mock_api: Callable[..., None], tmp_path: Path) -> None:
    error = {"code": "unreadable_document", "message": "The PDF is damaged."}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json=job("queued"))
        return httpx.Response(200, json=job("failed", error=error))

    document = tmp_path / "scan.png"
    document.write_bytes(b"\x89PNG\r\n\x1a\n")
    mock_api(handler)

    result = CliRunner().invoke(ocrq_cli, ["submit", "--wait", str(document)])

    assert result.exit_code == 1
    assert "failed" in result.output
    assert "The PDF is damaged." in result.output


def test_result_json_prints_pages(mock_api: Callable[..., None]) -> None:
    document = {"job_id": JOB_ID, "markdown": "text", "pages": [{"index": 0}]}
    mock_api(lambda request: httpx.Response(200, json=document))

    result = CliRunner().invoke(ocrq_cli, ["result", JOB_ID, "--format", "json"])

    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pages"] == [{"index": 0}]


def test_unreachable_api_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCRQ_API_URL", f"http://127.0.0.1:{free_port()}")

    result = CliRunner().invoke(ocrq_cli, ["status", JOB_ID])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "cannot connect to the ocrq API" in lines[0]
    assert "connection_failed" in lines[0]

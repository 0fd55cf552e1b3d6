"""`ocrq submit --password` sends the PDF's password as the form field the API reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from click.testing import CliRunner

from cli.main import cli as ocrq_cli
from tests.cli.test_client_cmds import fresh_settings, job, mock_api

__all__ = ["fresh_settings", "mock_api"]


def test_submit_sends_password_field(mock_api: Callable[..., None], tmp_path: Path) -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return httpx.Response(202, json=job("queued"))

    document = tmp_path / "locked.pdf"
    document.write_bytes(b"%PDF-1.7\n")
    mock_api(handler)

    result = CliRunner().invoke(ocrq_cli, ["submit", "--password", "s3cret", str(document)])

    assert result.exit_code == 0, result.output
    assert b'name="password"\r\n\r\ns3cret\r\n' in bodies[0]

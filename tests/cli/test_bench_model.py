"""`ocrq bench model` on the tiny network: every stage timed, exactly --tokens decoded."""

from __future__ import annotations

from click.testing import CliRunner

from cli.bench_model import STAGES
from cli.main import cli


def test_bench_model_tiny_prints_every_stage() -> None:
    arguments = ["bench", "model", "--config", "tiny", "--mode", "tiny", "--tokens", "3"]
    result = CliRunner().invoke(cli, arguments)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0] for line in result.output.splitlines() if line.strip()}
    for stage in STAGES:
        assert stage in rows, stage
    assert "3 output tokens per page" in result.output
    assert "decode speed:" in result.output
    assert "peak memory:" in result.output

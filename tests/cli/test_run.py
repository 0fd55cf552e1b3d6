"""`ocrq run` as a user runs it: a subprocess on the embedded defaults in a fresh data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.run import run
from tests.textmetrics import character_error_rate

OCRQ = Path(sys.executable).with_name("ocrq")
RUN_TIMEOUT_S = 120


def run_ocrq(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("OCRQ_") or key == "OCRQ_CORPUS_DIR"
    }
    env["OCRQ_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [str(OCRQ), "run", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


@pytest.fixture(scope="module")
def phototest_run(
    tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path
) -> subprocess.CompletedProcess[str]:
    """One `ocrq run --engine rapidocr phototest.tif`, shared by the tests that read its output."""
    pytest.importorskip("models.rapidocr_engine")
    data_dir = tmp_path_factory.mktemp("ocrq-data")
    return run_ocrq(data_dir, "--engine", "rapidocr", str(corpus_dir / "phototest.tif"))


def test_run_prints_markdown_matching_ground_truth(
    phototest_run: subprocess.CompletedProcess[str], corpus_dir: Path
) -> None:
    expected = (corpus_dir / "phototest.gt.txt").read_text(encoding="utf-8")

    assert phototest_run.returncode == 0, phototest_run.stderr
    assert character_error_rate(expected, phototest_run.stdout) <= 0.02


def test_run_keeps_stdout_free_of_logs(phototest_run: subprocess.CompletedProcess[str]) -> None:
    assert phototest_run.returncode == 0, phototest_run.stderr
    assert '"event"' not in phototest_run.stdout
    assert phototest_run.stdout.startswith("This is a lot of 12 point text")


def test_run_invalid_pdf_prints_one_error_line(tmp_path: Path, corpus_dir: Path) -> None:
    completed = run_ocrq(tmp_path, str(corpus_dir / "invalid.pdf"))

    assert completed.returncode != 0
    assert completed.stdout == ""
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert "unreadable_document" in lines[0]
    assert "Traceback" not in completed.stderr


def test_run_without_files_is_a_usage_error() -> None:
    completed = CliRunner().invoke(run, [])

    assert completed.exit_code == 2
    assert "no FILE given" in completed.output


def test_run_out_folder_writes_files(tmp_path: Path, corpus_dir: Path) -> None:
    """--out writes {stem}.md and {stem}.json, and the job's stored files are deleted after."""
    pytest.importorskip("models.rapidocr_engine")
    out = tmp_path / "out"
    data_dir = tmp_path / "data"
    document_path = str(corpus_dir / "multipage.tiff")

    completed = run_ocrq(data_dir, "--engine", "rapidocr", "--out", str(out), document_path)

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""
    document = json.loads((out / "multipage.json").read_text(encoding="utf-8"))
    assert [page["index"] for page in document["pages"]] == [0, 1, 2]
    assert (out / "multipage.md").read_text(encoding="utf-8") == document["markdown"] + "\n"
    assert [path for path in (data_dir / "storage").rglob("*") if path.is_file()] == []

"""`ocrq run` output names, progress from 0, and one-line refusals before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.cli.test_run import run_ocrq


def test_inputs_with_one_stem_get_distinct_outputs(tmp_path: Path, corpus_dir: Path) -> None:
    pytest.importorskip("models.rapidocr_engine")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = tmp_path / "a" / "x.tiff"
    second = tmp_path / "b" / "x.tif"
    shutil.copyfile(corpus_dir / "multipage.tiff", first)
    shutil.copyfile(corpus_dir / "phototest.tif", second)
    out = tmp_path / "out"
    (out / "figures" / "x-3").mkdir(parents=True)  # an earlier run's figures keep their name
    args = ["--engine", "rapidocr", "--out", str(out), str(first), str(second)]

    completed = run_ocrq(tmp_path / "data", *args)
    before = (out / "x.md").read_text(encoding="utf-8")
    again = run_ocrq(tmp_path / "data", *args)

    assert completed.returncode == 0, completed.stderr
    # The bar of the 3-page document starts at 0 before its first page is read.
    assert "0/3" in completed.stderr
    assert "<--- Page Split --->" in before
    assert "quick brown dog" not in before
    assert "quick brown dog" in (out / "x-2.md").read_text(encoding="utf-8")
    assert again.returncode == 0, again.stderr
    assert (out / "x.md").read_text(encoding="utf-8") == before
    assert sorted(path.name for path in out.glob("*.md")) == ["x-2.md", "x-4.md", "x-5.md", "x.md"]
    assert "written as x-4.md" in again.stderr


def test_unsupported_task_is_one_line_before_any_work(tmp_path: Path, corpus_dir: Path) -> None:
    data_dir = tmp_path / "data"

    completed = run_ocrq(
        data_dir, "--engine", "rapidocr", "--task", "figure", str(corpus_dir / "phototest.tif")
    )

    assert completed.returncode == 1
    assert completed.stderr.count("\n") == 1, completed.stderr
    assert "unsupported_task" in completed.stderr
    assert not data_dir.exists()


def test_encrypted_pdf_without_password_names_the_option(tmp_path: Path, corpus_dir: Path) -> None:
    pytest.importorskip("models.rapidocr_engine")

    completed = run_ocrq(
        tmp_path / "data", "--engine", "rapidocr", str(corpus_dir / "skew-encrypted.pdf")
    )

    assert completed.returncode == 1
    assert "--password" in completed.stderr
    assert "pdf_password_required" in completed.stderr

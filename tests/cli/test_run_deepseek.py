"""`ocrq run --out` with the deepseek-ocr engine: figure crops land where the markdown links."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.run import run
from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.engine import DeepseekOcrEngine
from models.deepseek_ocr.generate import GenerationConfig
from models.deepseek_ocr.prompts import load_tokenizer, save_test_tokenizer

# A grounded page as DeepSeek-OCR writes it: a title, then one image region (0-999 grid).
GROUNDED_OUTPUT = (
    "<|ref|>title<|/ref|><|det|>[[50, 20, 950, 120]]<|/det|>\n# Report\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 300, 600, 800]]<|/det|>\n"
)


def test_run_out_writes_figures_beside_markdown(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokenizer = load_tokenizer(save_test_tokenizer(tmp_path / "tokenizer"))
    engine = DeepseekOcrEngine.from_config(
        OcrConfig.tiny(), tokenizer, generation=GenerationConfig(max_new_tokens=2)
    )
    # Random weights write noise, so the decoded text is replaced by a grounded page.
    monkeypatch.setattr(tokenizer, "decode", lambda _ids: GROUNDED_OUTPUT)
    monkeypatch.setattr("worker.runner.load_engine", lambda _name, **_options: engine)
    monkeypatch.setenv("OCRQ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("OCRQ_MODEL_PATH", str(tmp_path / "tokenizer"))
    out = tmp_path / "out"
    args = ["--engine", "deepseek-ocr", "--mode", "tiny", "--out", str(out)]

    result = CliRunner().invoke(run, [*args, str(corpus_dir / "phototest.tif")])

    assert result.exit_code == 0, result.output
    markdown = (out / "phototest.md").read_text(encoding="utf-8")
    # Each input's figures get a folder of their own, and its markdown links point there.
    assert "![](figures/phototest/0_0.jpg)" in markdown
    assert (out / "figures" / "phototest" / "0_0.jpg").read_bytes().startswith(b"\xff\xd8")

"""The deepseek-ocr engine end to end, on a tiny random checkpoint folder.

`ocrq run` and a real `ocrq worker` load the checkpoint from OCRQ_MODEL_PATH. Its text is noise,
so the tests check the shape of the results (pages, finish reasons, stage timings), not the text.
OCRQ_MAX_NEW_TOKENS=8 keeps each page to a few seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from core.results import PAGE_SEPARATOR
from models.deepseek_ocr.preprocess import count_image_tokens
from models.deepseek_ocr.prompts import build_prompt_ids, load_tokenizer
from models.deepseek_ocr.random_weights import save_random_checkpoint
from tests.e2e.conftest import OCRQ, Stack
from tests.e2e.test_service import JOB_TIMEOUT_S, page_rows, stored_object

# Stages the deepseek-ocr engine times on every page.
ENGINE_STAGES = ("preprocess", "sam", "clip", "projector", "prefill", "decode")
MAX_NEW_TOKENS = "8"
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny checkpoint folder: config.json, model.safetensors and the test tokenizer."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny-checkpoint"))


def run_ocrq(args: list[str], model_path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCRQ_")}
    env.update(
        {
            "OCRQ_DATA_DIR": str(data_dir),
            "OCRQ_MODEL_PATH": str(model_path),
            "OCRQ_MAX_NEW_TOKENS": MAX_NEW_TOKENS,
        }
    )
    return subprocess.run(
        [OCRQ, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=RUN_TIMEOUT_S,
    )


def check_engine_page(page: dict[str, Any]) -> None:
    assert page["status"] == "succeeded", page
    assert page["finish_reason"] in ("eos", "length", "loop"), page
    for stage in ENGINE_STAGES:
        assert stage in page["timings_ms"], (stage, page["timings_ms"])


def test_run_writes_markdown_and_json(checkpoint: Path, corpus_dir: Path, tmp_path: Path) -> None:
    """A TIFF and a two-page PDF: one markdown section per page, engine fields in the JSON."""
    paths = [corpus_dir / "phototest.tif", corpus_dir / "test-ocr-mixed.pdf"]
    out = tmp_path / "out"
    args = ["run", "--engine", "deepseek-ocr", "--mode", "base", "--out", str(out)]

    completed = run_ocrq([*args, *map(str, paths)], checkpoint, tmp_path / "data")

    assert completed.returncode == 0, completed.stderr[-4000:]
    for path, page_count in zip(paths, (1, 2), strict=True):
        markdown = (out / f"{path.stem}.md").read_text(encoding="utf-8")
        assert markdown.count(PAGE_SEPARATOR.strip()) == page_count - 1, path.name
        document = json.loads((out / f"{path.stem}.json").read_text(encoding="utf-8"))
        assert [page["index"] for page in document["pages"]] == list(range(page_count))
        for page in document["pages"]:
            check_engine_page(page)


def test_run_names_missing_tensor_in_one_line(
    checkpoint: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken-checkpoint"
    broken.mkdir()
    for item in checkpoint.iterdir():
        if item.suffix != ".safetensors":
            (broken / item.name).write_bytes(item.read_bytes())
    tensors = load_file(str(checkpoint / "model.safetensors"))
    removed = sorted(tensors)[-1]
    del tensors[removed]
    save_file(tensors, str(broken / "model.safetensors"))
    args = ["run", "--engine", "deepseek-ocr", str(corpus_dir / "phototest.tif")]

    completed = run_ocrq(args, broken, tmp_path / "data")

    lines = completed.stderr.strip().splitlines()
    assert completed.returncode == 1
    assert len(lines) == 1, completed.stderr[-4000:]
    assert lines[0].startswith("error: invalid OCRQ_MODEL_PATH")
    assert "missing" in lines[0]
    assert removed in lines[0]
    assert "Traceback" not in completed.stderr


def test_run_rejects_missing_model_folder(corpus_dir: Path, tmp_path: Path) -> None:
    args = ["run", "--engine", "deepseek-ocr", str(corpus_dir / "phototest.tif")]

    completed = run_ocrq(args, tmp_path / "absent", tmp_path / "data")

    assert completed.returncode == 1
    assert completed.stderr.startswith("error: invalid OCRQ_MODEL_PATH")
    assert len(completed.stderr.strip().splitlines()) == 1


def test_run_rejects_locate_without_target(
    checkpoint: Path, corpus_dir: Path, tmp_path: Path
) -> None:
    args = [
        "run",
        "--engine",
        "deepseek-ocr",
        "--task",
        "locate",
        str(corpus_dir / "phototest.tif"),
    ]

    completed = run_ocrq(args, checkpoint, tmp_path / "data")

    assert completed.returncode == 1
    assert "(code missing_target)" in completed.stderr


@pytest.mark.services
def test_worker_runs_deepseek_job(stack: Stack, checkpoint: Path, corpus_dir: Path) -> None:
    """A two-page PDF submitted to the API is read by `ocrq worker` with deepseek-ocr."""
    stack.env.update(
        {
            "OCRQ_ENGINE": "deepseek-ocr",
            "OCRQ_MODEL_PATH": str(checkpoint),
            "OCRQ_MAX_NEW_TOKENS": MAX_NEW_TOKENS,
            "OCRQ_MAX_BATCH_PAGES": "2",
        }
    )
    stack.start_api()
    worker = stack.start_worker()

    with stack.client() as client:
        job = client.submit(corpus_dir / "test-ocr-mixed.pdf", mode="base")
        assert job["mode"] == "base"
        job = client.wait(job["id"], JOB_TIMEOUT_S, progress=False)
        result = client.result(job["id"])

    assert job["status"] == "succeeded", (job, worker.output_tail())
    assert job["engine"] == "deepseek-ocr"
    rows = page_rows(stack.database_url, job["id"])
    assert [row.page_index for row in rows] == [0, 1]
    assert all(row.status == "succeeded" for row in rows)
    for page in result["pages"]:
        check_engine_page(page)
    # The prompt has as many <image> slots as base mode gives the page, so the mode arrived.
    tokenizer = load_tokenizer(checkpoint)
    for row in rows:
        image_tokens, _grid = count_image_tokens(row.width, row.height, "base")
        prompt = build_prompt_ids(tokenizer, "markdown", None, image_tokens)
        assert row.result["prompt_tokens"] == len(prompt), row.page_index
    stored = json.loads(stored_object(stack, f"results/{job['id']}/result.json"))
    assert len(stored["pages"]) == 2

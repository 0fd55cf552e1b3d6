"""worker.pipeline with engines that read several pages per call, and deepseek-ocr figures."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import select

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.storage import figure_key, result_markdown_key
from core.tables import Page
from models.deepseek_ocr.config import OcrConfig
from models.deepseek_ocr.engine import DeepseekOcrEngine
from models.deepseek_ocr.generate import GenerationConfig
from models.deepseek_ocr.prompts import load_tokenizer, save_test_tokenizer
from models.engine import PageInput, PageOptions, PageResult
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job

# A grounded page as DeepSeek-OCR writes it: a title, then one image region (0-999 grid).
GROUNDED_OUTPUT = (
    "<|ref|>title<|/ref|><|det|>[[50, 20, 950, 120]]<|/det|>\n# Report\n\n"
    "<|ref|>image<|/ref|><|det|>[[100, 300, 600, 800]]<|/det|>\n"
)


@dataclass
class BatchingEngine(FakeEngine):
    """A FakeEngine that reads up to max_batch_pages pages per call and records each call."""

    max_batch_pages: int = 2
    batches: list[list[int]] = field(default_factory=list)

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        self.batches.append([page.page_index for page in pages])
        return super().run_pages(pages, options)


def make_batch_harness(make_settings: Callable[..., Settings], engine: FakeEngine) -> Harness:
    harness = make_harness(make_settings(pdf_render_dpi=36), engine)
    set_embedded_runner(None)
    return harness


@pytest.fixture
def settings_factory(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Settings]]:
    yield make_settings
    set_embedded_runner(None)


def page_statuses(harness: Harness, job_id: str) -> list[str]:
    with harness.database.session() as session:
        statement = select(Page).where(Page.job_id == job_id).order_by(Page.page_index)
        return [page.status for page in session.scalars(statement)]


def test_pages_go_to_engine_in_batches(
    settings_factory: Callable[..., Settings], corpus_dir: Path
) -> None:
    engine = BatchingEngine(max_batch_pages=2)
    harness = make_batch_harness(settings_factory, engine)
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")
    progress: list[tuple[int, int]] = []

    outcome = process_job(job_id, harness.context, on_page=lambda *args: progress.append(args))

    assert outcome.status == JobStatus.SUCCEEDED
    assert engine.batches == [[0, 1], [2]]
    assert progress == [(1, 3), (2, 3), (3, 3)]
    assert page_statuses(harness, job_id) == [PageStatus.SUCCEEDED] * 3


def test_unbatched_engine_gets_single_pages(
    settings_factory: Callable[..., Settings], corpus_dir: Path
) -> None:
    engine = FakeEngine()
    harness = make_batch_harness(settings_factory, engine)
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")
    calls: list[int] = []
    original = engine.run_pages

    def counting_run_pages(pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        calls.append(len(pages))
        return original(pages, options)

    engine.run_pages = counting_run_pages  # type: ignore[method-assign]

    process_job(job_id, harness.context)

    assert calls == [1, 1, 1]


def test_failed_batch_is_read_page_by_page(
    settings_factory: Callable[..., Settings], corpus_dir: Path
) -> None:
    """A page that breaks its batch fails alone; its batch mates are read again and succeed."""
    engine = BatchingEngine(max_batch_pages=3, failing_pages={1})
    harness = make_batch_harness(settings_factory, engine)
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    outcome = process_job(job_id, harness.context)

    assert outcome.status == JobStatus.PARTIAL
    # One batched call, then each page alone, page 1 with both of its OCRQ_PAGE_MAX_ATTEMPTS.
    assert engine.batches == [[0, 1, 2], [0], [1], [1], [2]]
    assert page_statuses(harness, job_id) == [
        PageStatus.SUCCEEDED,
        PageStatus.FAILED,
        PageStatus.SUCCEEDED,
    ]


def test_deepseek_figures_resolve_from_result_markdown(
    settings_factory: Callable[..., Settings],
    corpus_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tiny deepseek-ocr engine's image region is stored where result.md links to it."""
    tokenizer = load_tokenizer(save_test_tokenizer(tmp_path / "tokenizer"))
    engine = DeepseekOcrEngine.from_config(
        OcrConfig.tiny(),
        tokenizer,
        generation=GenerationConfig(max_new_tokens=2, loop_max_period=0),
    )
    # Random weights write noise, so the decoded text is replaced by a grounded page.
    monkeypatch.setattr(tokenizer, "decode", lambda _ids: GROUNDED_OUTPUT)
    harness = make_batch_harness(settings_factory, engine)
    job_id = harness.insert_job(corpus_dir / "phototest.tif", engine="deepseek-ocr", mode="tiny")

    outcome = process_job(job_id, harness.context)

    assert outcome.status == JobStatus.SUCCEEDED
    markdown = harness.storage.get_bytes(result_markdown_key(job_id)).decode()
    assert "![](figures/0_0.jpg)" in markdown
    linked = posixpath.join(posixpath.dirname(result_markdown_key(job_id)), "figures/0_0.jpg")
    assert linked == figure_key(job_id, "0_0.jpg")
    assert harness.storage.get_bytes(linked).startswith(b"\xff\xd8")
    assert harness.service.list_figures(job_id) == ["0_0.jpg"]

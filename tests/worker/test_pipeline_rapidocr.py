"""worker.pipeline with the real rapidocr engine on corpus pages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.celery_app import set_embedded_runner
from core.results import PAGE_SEPARATOR
from core.settings import Settings
from core.states import JobStatus
from models.engine import Engine
from tests.textmetrics import character_error_rate
from tests.worker.fakes import Harness, make_harness
from worker.pipeline import process_job


@pytest.fixture(scope="session")
def rapidocr_engine() -> Engine:
    """The rapidocr engine, loaded once for the session."""
    pytest.importorskip("models.rapidocr_engine")
    from models.registry import load_engine

    return load_engine("rapidocr")


@pytest.fixture
def harness(make_settings: Callable[..., Settings], rapidocr_engine: Engine) -> Iterator[Harness]:
    built = make_harness(make_settings(), rapidocr_engine)
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def test_phototest_text_matches_ground_truth(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif", engine="rapidocr")

    outcome = process_job(job.id, harness.context)

    markdown = harness.service.get_result_markdown(job.id)
    expected = (corpus_dir / "phototest.gt.txt").read_text(encoding="utf-8")
    assert outcome.status == JobStatus.SUCCEEDED
    assert harness.service.get_job(job.id).engine == "rapidocr"
    assert character_error_rate(expected, markdown) <= 0.02


@pytest.mark.slow
def test_multipage_pdf_gives_one_section_per_page(harness: Harness, corpus_dir: Path) -> None:
    """About 45 s on 2 CPU cores: the PDF has two dense text pages and a 9000x9000 page."""
    job = harness.service.create_job(corpus_dir / "multipage.pdf", engine="rapidocr")

    process_job(job.id, harness.context)

    result = harness.service.get_result(job.id)
    sections = result["markdown"].split(PAGE_SEPARATOR)
    assert harness.service.get_job(job.id).status == JobStatus.SUCCEEDED
    assert len(sections) == 6
    assert [page["index"] for page in result["pages"]] == list(range(6))
    assert "81 megapixels" in sections[1]

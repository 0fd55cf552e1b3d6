"""Per-page JSON in storage: written by the pipeline as each page is recorded."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.results import page_json_key
from core.settings import Settings
from core.storage import Storage
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def harness(make_settings: Callable[..., Settings], engine: FakeEngine) -> Iterator[Harness]:
    built = make_harness(make_settings(pdf_render_dpi=36), engine)
    yield built
    built.database.dispose()


class RecordingStorage:
    """Wraps a storage and records the keys written, in order."""

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.written: list[str] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self.written.append(key)
        self.inner.put_bytes(key, data, content_type)


def read_page_json(storage: Storage, job_id: str, page_index: int) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(storage.get_bytes(page_json_key(job_id, page_index)))
    return loaded


def test_each_page_json_is_stored_with_its_figures(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    engine.figure_pages = {1}
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    process_job(job_id, harness.context)

    pages = [read_page_json(harness.storage, job_id, index) for index in range(3)]
    assert [page["markdown"] for page in pages] == ["page 1", "page 2", "page 3"]
    assert [page["figures"] for page in pages] == [[], ["1_0.jpg"], []]
    assert pages[0]["status"] == "succeeded"


def test_failed_page_json_carries_its_error(
    harness: Harness, engine: FakeEngine, corpus_dir: Path
) -> None:
    engine.failing_pages = {1}
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    process_job(job_id, harness.context)

    failed = read_page_json(harness.storage, job_id, 1)
    assert failed["status"] == "failed"
    error = failed["error"]
    assert isinstance(error, dict)
    assert error["code"] == "engine_error"


def test_page_json_is_written_before_the_result(
    make_settings: Callable[..., Settings], engine: FakeEngine, corpus_dir: Path
) -> None:
    """Pages land in storage as they finish, not only once the whole job is done."""
    settings = make_settings(pdf_render_dpi=36)
    recording = RecordingStorage(make_harness(settings, engine).storage)
    harness = make_harness(settings, engine, storage=recording)  # type: ignore[arg-type]
    job_id = harness.insert_job(corpus_dir / "multipage.tiff")

    process_job(job_id, harness.context)

    written = [key.rpartition(f"results/{job_id}/")[2] for key in recording.written]
    assert written.index("pages/2.json") < written.index("result.json")
    assert sorted(key for key in written if key.startswith("pages/")) == [
        "pages/0.json",
        "pages/1.json",
        "pages/2.json",
    ]
    harness.database.dispose()

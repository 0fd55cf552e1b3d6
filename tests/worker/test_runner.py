"""worker.runner: engines load once, the in-process loop retries, the sweeper thread runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from core.celery_app import set_embedded_runner
from core.errors import ConfigError
from core.settings import Settings
from core.states import JobStatus
from core.tables import Job, utcnow
from tests.worker.fakes import FakeEngine, make_harness
from tests.worker.test_pipeline import FlakyStorage
from worker.runner import EngineCache, run_job_inline, start_sweeper


def test_engine_cache_loads_engine_once(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[str] = []

    def fake_load(name: str, **_options: object) -> FakeEngine:
        loads.append(name)
        return FakeEngine(name=name)

    monkeypatch.setattr("worker.runner.load_engine", fake_load)
    cache = EngineCache(make_settings(engine="auto"))

    first = cache("auto")
    second = cache("rapidocr")

    assert first is second
    assert loads == ["rapidocr"]


def test_engine_cache_rejects_unknown_engine(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError):
        EngineCache(make_settings())("tesseract")


def test_deepseek_without_weights_is_config_error(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="OCRQ_MODEL_PATH"):
        EngineCache(make_settings())("deepseek-ocr")


def test_run_job_inline_retries_until_success(
    make_settings: Callable[..., Settings], corpus_dir: Path
) -> None:
    settings = make_settings()
    harness = make_harness(settings, FakeEngine())
    harness = make_harness(settings, FakeEngine(), storage=FlakyStorage(harness.storage, 2))
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    outcome = run_job_inline(job_id, harness.context)
    set_embedded_runner(None)

    assert outcome.status == JobStatus.SUCCEEDED
    assert harness.service.get_job(job_id).attempt == 3


def test_sweeper_thread_reenqueues_stranded_job(
    make_settings: Callable[..., Settings], corpus_dir: Path
) -> None:
    harness = make_harness(make_settings(), FakeEngine())
    set_embedded_runner(None)
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    sent: list[str] = []
    set_embedded_runner(sent.append)

    stop = start_sweeper(harness.service.settings.model_copy(), interval_s=0.05)
    try:
        with harness.database.session() as session:
            old = utcnow() - timedelta(days=1)
            session.execute(update(Job).where(Job.id == job.id).values(created_at=old))
        deadline = time.monotonic() + 5
        while not sent and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        set_embedded_runner(None)

    assert sent[:1] == [job.id]


def test_engine_cache_passes_engine_settings(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    received: dict[str, object] = {}

    def fake_load(name: str, **options: object) -> FakeEngine:
        received.update(options, name=name)
        return FakeEngine(name=name)

    monkeypatch.setattr("worker.runner.load_engine", fake_load)
    settings = make_settings(
        engine="auto",
        model_path=tmp_path,
        max_new_tokens=8,
        max_tiles=4,
        max_batch_pages=3,
        model_dtype="float32",
    )

    EngineCache(settings)("auto")

    assert received == {
        "name": "deepseek-ocr",
        "model_path": tmp_path,
        "device": "cpu",
        "dtype": "float32",
        "max_new_tokens": 8,
        "max_tiles": 4,
        "max_batch_pages": 3,
    }


def test_engine_load_error_names_setting(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from models.registry import EngineLoadError

    def failing_load(name: str, **_options: object) -> FakeEngine:
        raise EngineLoadError("dtype", "unknown dtype 'int8'")

    monkeypatch.setattr("worker.runner.load_engine", failing_load)

    with pytest.raises(ConfigError, match="OCRQ_MODEL_DTYPE: unknown dtype"):
        EngineCache(make_settings(model_path=tmp_path))("deepseek-ocr")

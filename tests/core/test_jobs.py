"""core.jobs: order of writes, the sweeper, cancel, delete and the result documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import OperationalError

from core.celery_app import set_embedded_runner
from core.errors import ConflictError, InputError, NotFoundError
from core.idempotency_store import IdempotentRequest
from core.job_options import JOB_MODES, JOB_TASKS
from core.jobs import job_to_dict
from core.results import PAGE_SEPARATOR
from core.settings import Settings
from core.states import JobStatus
from core.storage import input_key, result_json_key
from core.tables import Job, utcnow
from core.tenants import get_or_create_tenant
from models.engine import MODES, TASKS
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = make_harness(make_settings(), FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def failing_runner(_job_id: str) -> None:
    raise ConnectionError("broker down")


def backdate(harness: Harness, job_id: str, seconds: int) -> None:
    with harness.database.session() as session:
        moment = utcnow() - timedelta(seconds=seconds)
        session.execute(update(Job).where(Job.id == job_id).values(created_at=moment))


def test_create_job_stores_input_commits_then_enqueues(harness: Harness, corpus_dir: Path) -> None:
    observed: list[tuple[bool, str]] = []

    def runner(job_id: str) -> None:
        stored = harness.storage.exists(input_key(job_id))
        observed.append((stored, harness.service.get_job(job_id).status))

    set_embedded_runner(runner)
    job = harness.service.create_job(corpus_dir / "phototest.tif", filename="phototest.tif")

    assert observed == [(True, JobStatus.QUEUED)]
    assert job.enqueued_at is not None
    assert job.pages_total == 1
    assert job.media_type == "image/tiff"
    assert job.filename == "phototest.tif"


def test_failed_enqueue_leaves_job_queued_without_enqueued_at(
    harness: Harness, corpus_dir: Path
) -> None:
    set_embedded_runner(None)

    job = harness.service.create_job(corpus_dir / "phototest.tif")

    assert job.status == JobStatus.QUEUED
    assert job.enqueued_at is None
    assert harness.storage.exists(input_key(job.id))


def test_sweep_reenqueues_job_whose_enqueue_failed(harness: Harness, corpus_dir: Path) -> None:
    set_embedded_runner(None)
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    backdate(harness, job.id, 120)
    set_embedded_runner(harness.enqueued.append)

    sent = harness.service.sweep()

    assert sent == [job.id]
    assert harness.enqueued == [job.id]
    assert harness.service.get_job(job.id).enqueued_at is not None


def test_sweep_resends_queued_job_whose_message_was_lost(
    harness: Harness, corpus_dir: Path
) -> None:
    """A job sent but never claimed for a visibility timeout is sent again, once per window."""
    set_embedded_runner(None)
    job_id = harness.insert_job(corpus_dir / "phototest.tif", enqueued_at=utcnow())
    window_s = 3 * harness.settings.task_time_limit_s
    lost_at = utcnow() - timedelta(seconds=window_s + 5)
    with harness.database.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(enqueued_at=lost_at))
    set_embedded_runner(harness.enqueued.append)

    first = harness.service.sweep()
    second = harness.service.sweep()

    assert first == [job_id]
    assert harness.enqueued == [job_id]
    assert second == []


def test_sweep_leaves_recently_sent_queued_job(harness: Harness, corpus_dir: Path) -> None:
    set_embedded_runner(None)
    harness.insert_job(corpus_dir / "phototest.tif", enqueued_at=utcnow())
    set_embedded_runner(harness.enqueued.append)

    assert harness.service.sweep() == []


def test_sweep_waits_out_grace_period(harness: Harness, corpus_dir: Path) -> None:
    """A job just committed may still be between its commit and its enqueue."""
    set_embedded_runner(None)
    harness.service.create_job(corpus_dir / "phototest.tif")
    set_embedded_runner(harness.enqueued.append)

    assert harness.service.sweep() == []


def test_sweep_leaves_job_queued_when_enqueue_fails_again(
    harness: Harness, corpus_dir: Path
) -> None:
    set_embedded_runner(None)
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    backdate(harness, job.id, 120)

    assert harness.service.sweep() == []
    assert harness.service.get_job(job.id).enqueued_at is None


def test_sweep_reenqueues_running_job_with_stale_heartbeat(
    harness: Harness, corpus_dir: Path
) -> None:
    job_id = harness.insert_job(corpus_dir / "phototest.tif", enqueued_at=utcnow())
    stale = utcnow() - timedelta(seconds=harness.settings.task_time_limit_s + 5)
    with harness.database.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(status="running", heartbeat_at=stale)
        )

    assert harness.service.sweep() == [job_id]


def test_create_job_rejects_invalid_pdf_before_storing(harness: Harness, corpus_dir: Path) -> None:
    with pytest.raises(InputError) as caught:
        harness.service.create_job(corpus_dir / "invalid.pdf")

    assert caught.value.code == "unreadable_document"
    assert not (harness.settings.data_dir / "storage" / "inputs").exists()
    assert harness.enqueued == []


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"mode": "huge"}, "invalid_mode"),
        ({"task": "translate"}, "invalid_task"),
        ({"engine": "tesseract"}, "invalid_engine"),
        ({"task": "locate"}, "missing_target"),
        ({"engine": "rapidocr", "task": "describe"}, "unsupported_task"),
        ({"priority": "urgent"}, "invalid_priority"),
    ],
)
def test_create_job_rejects_invalid_options(
    harness: Harness, corpus_dir: Path, options: dict[str, str], code: str
) -> None:
    with pytest.raises(InputError) as caught:
        harness.service.create_job(corpus_dir / "phototest.tif", **options)

    assert caught.value.code == code


def test_create_or_replay_job_returns_original_for_same_key(
    harness: Harness, corpus_dir: Path
) -> None:
    request = IdempotentRequest.build(None, "k-1", "fingerprint-1", "job", ttl_s=60)
    path = corpus_dir / "phototest.tif"

    first, first_created = harness.service.create_or_replay_job(
        path, idempotency=request, tenant_id=None
    )
    second, second_created = harness.service.create_or_replay_job(
        path, idempotency=request, tenant_id=None
    )

    assert (first_created, second_created) == (True, False)
    assert second.id == first.id
    assert first.idempotency_key == "k-1"
    assert harness.enqueued == [first.id]


def test_get_job_hides_other_tenants_job(harness: Harness, corpus_dir: Path) -> None:
    """A job of tenant A read as tenant B raises the same error as an unknown id."""
    tenant_a, _ = get_or_create_tenant(harness.database, "tenant-a")
    job = harness.service.create_job(corpus_dir / "phototest.tif", tenant_id=tenant_a.id)

    with pytest.raises(NotFoundError) as other_tenant:
        harness.service.get_job(job.id, tenant_id="another-tenant-id")
    unknown_id = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(NotFoundError) as unknown:
        harness.service.get_job(unknown_id, tenant_id="another-tenant-id")

    assert harness.service.get_job(job.id, tenant_id=tenant_a.id).id == job.id
    assert other_tenant.value.code == unknown.value.code
    assert other_tenant.value.message == unknown.value.message.replace(unknown_id, job.id)


def test_job_modes_and_tasks_match_engine_protocol() -> None:
    assert JOB_MODES == MODES
    assert JOB_TASKS == TASKS


def test_rapidocr_tasks_match_engine() -> None:
    from core.job_options import RAPIDOCR_TASKS
    from models import rapidocr_engine

    assert RAPIDOCR_TASKS == rapidocr_engine._SUPPORTED_TASKS


def test_job_dict_has_public_fields(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")

    public = job_to_dict(job)

    assert set(public) == {
        "id", "status", "pages_total", "pages_done", "engine", "mode", "task", "error",
        "created_at", "started_at", "finished_at",
    }  # fmt: skip
    assert public["error"] is None
    assert public["created_at"].endswith("Z")


def test_cancel_queued_job(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")

    canceled = harness.service.cancel_job(job.id)

    assert canceled.status == JobStatus.CANCELED
    assert canceled.finished_at is not None
    assert process_job(job.id, harness.context).status == "dropped"


def test_cancel_finished_job_conflicts(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    process_job(job.id, harness.context)

    with pytest.raises(ConflictError):
        harness.service.cancel_job(job.id)


def test_delete_finished_job_removes_rows_and_objects(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")
    process_job(job.id, harness.context)

    harness.service.delete_job(job.id)

    assert not harness.storage.exists(input_key(job.id))
    assert not harness.storage.exists(result_json_key(job.id))
    with pytest.raises(NotFoundError):
        harness.service.get_job(job.id)


def test_delete_running_job_conflicts(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")

    with pytest.raises(ConflictError):
        harness.service.delete_job(job.id)


def test_cancel_or_delete_picks_by_status(harness: Harness, corpus_dir: Path) -> None:
    queued = harness.service.create_job(corpus_dir / "phototest.tif")
    finished = harness.service.create_job(corpus_dir / "phototest.tif")
    process_job(finished.id, harness.context)

    canceled = harness.service.cancel_or_delete(queued.id)
    deleted = harness.service.cancel_or_delete(finished.id)

    assert canceled is not None
    assert canceled.status == JobStatus.CANCELED
    assert deleted is None
    with pytest.raises(NotFoundError):
        harness.service.get_job(finished.id)


def test_get_unknown_job_raises_not_found(harness: Harness) -> None:
    with pytest.raises(NotFoundError) as caught:
        harness.service.get_job("00000000-0000-0000-0000-000000000000")

    assert caught.value.http_status == 404


def test_result_joins_pages_with_separator(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "multipage.tiff")
    process_job(job.id, harness.context)

    result = harness.service.get_result(job.id)

    assert result["markdown"] == PAGE_SEPARATOR.join(["page 1", "page 2", "page 3"])
    assert [page["index"] for page in result["pages"]] == [0, 1, 2]
    assert set(result["pages"][0]) == {
        "index", "width", "height", "markdown", "blocks", "finish_reason", "timings_ms",
        "status", "error",
    }  # fmt: skip


def test_result_of_queued_job_has_no_pages(harness: Harness, corpus_dir: Path) -> None:
    job = harness.service.create_job(corpus_dir / "phototest.tif")

    assert harness.service.get_result(job.id) == {"job_id": job.id, "markdown": "", "pages": []}


def test_failed_commit_removes_stored_input(
    harness: Harness, corpus_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_session() -> object:
        raise OperationalError("INSERT", {}, Exception("database is gone"))

    monkeypatch.setattr(harness.database, "session", broken_session)

    with pytest.raises(OperationalError):
        harness.service.create_job(corpus_dir / "phototest.tif")

    inputs = harness.settings.data_dir / "storage" / "inputs"
    assert not inputs.exists() or list(inputs.rglob("*")) == []

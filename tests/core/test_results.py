"""core.results: figure names, result links and the retention sweep."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, update

from core.celery_app import set_embedded_runner
from core.errors import NotFoundError
from core.results import check_figure_name, page_json_key, result_links
from core.settings import Settings
from core.states import JobStatus
from core.storage import figure_key, input_key, result_json_key
from core.tables import Batch, Job, WebhookAttempt, WebhookDelivery, new_id, utcnow
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job

DAY_S = 24 * 3600


def build_harness(settings: Settings) -> Harness:
    engine = FakeEngine()
    engine.figure_pages = {0}
    return make_harness(settings, engine)


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = build_harness(make_settings(result_retention_s=DAY_S))
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def finished_job(harness: Harness, corpus_dir: Path) -> str:
    job_id = harness.insert_job(corpus_dir / "phototest.tif")
    process_job(job_id, harness.context)
    return job_id


@pytest.mark.parametrize("name", ["../result.json", "0_0.jpg/../../x", "a.jpg", "0_0.png", ""])
def test_figure_name_rejects_other_patterns(name: str) -> None:
    with pytest.raises(NotFoundError) as caught:
        check_figure_name("job", name)
    assert caught.value.code == "figure_not_found"


def test_sweep_deletes_finished_job_past_retention(harness: Harness, corpus_dir: Path) -> None:
    job_id = finished_job(harness, corpus_dir)

    harness.service.sweep(now=utcnow() + timedelta(seconds=DAY_S + 60))

    with pytest.raises(NotFoundError):
        harness.service.get_job(job_id)
    assert not harness.storage.exists(result_json_key(job_id))
    assert not harness.storage.exists(input_key(job_id))
    assert not harness.storage.exists(figure_key(job_id, "0_0.jpg"))


def test_sweep_keeps_job_within_retention(harness: Harness, corpus_dir: Path) -> None:
    job_id = finished_job(harness, corpus_dir)

    harness.service.sweep(now=utcnow() + timedelta(seconds=DAY_S - 60))

    assert harness.service.get_job(job_id).status == JobStatus.SUCCEEDED
    assert harness.storage.exists(result_json_key(job_id))


def test_sweep_never_expires_unfinished_jobs(harness: Harness, corpus_dir: Path) -> None:
    job_id = harness.insert_job(corpus_dir / "phototest.tif")

    harness.service.sweep(now=utcnow() + timedelta(seconds=10 * DAY_S))

    assert harness.service.get_job(job_id).status == JobStatus.QUEUED


def test_sweep_deletes_batch_once_its_jobs_expired(harness: Harness, corpus_dir: Path) -> None:
    finished, running = new_id(), new_id()
    with harness.database.session() as session:
        session.add(Batch(id=finished, status="completed", jobs_total=1, finished_at=utcnow()))
        session.add(Batch(id=running, status="running", jobs_total=1))
    job_id = harness.insert_job(corpus_dir / "phototest.tif", batch_id=finished)
    process_job(job_id, harness.context)

    harness.service.sweep(now=utcnow() + timedelta(seconds=DAY_S + 60))

    with harness.database.session() as session:
        assert session.get(Batch, finished) is None
        assert session.get(Batch, running) is not None


def test_zero_retention_keeps_results(
    make_settings: Callable[..., Settings], corpus_dir: Path
) -> None:
    harness = build_harness(make_settings(result_retention_s=0))
    job_id = finished_job(harness, corpus_dir)

    harness.service.sweep(now=utcnow() + timedelta(days=3650))

    assert harness.storage.exists(result_json_key(job_id))
    harness.database.dispose()


def test_links_on_file_storage_point_at_api_routes(harness: Harness, corpus_dir: Path) -> None:
    job_id = finished_job(harness, corpus_dir)
    job = harness.service.get_job(job_id)
    base = f"http://testserver/v1/jobs/{job_id}"

    links = result_links(harness.storage, job, job.pages, base, expires_s=60)

    assert links["expires_at"] is None
    assert links["result_json"] == f"{base}/result"
    assert links["pages"] == [{"index": 0, "url": f"{base}/pages/0"}]
    assert links["figures"] == [{"name": "0_0.jpg", "url": f"{base}/figures/0_0.jpg"}]


def test_links_on_s3_are_presigned_urls_that_download(
    make_settings: Callable[..., Settings],
    s3_storage_url: str,
    s3_endpoint_url: str,
    corpus_dir: Path,
) -> None:
    settings = make_settings(storage_url=s3_storage_url, s3_endpoint_url=s3_endpoint_url)
    harness = build_harness(settings)
    job_id = finished_job(harness, corpus_dir)
    job = harness.service.get_job(job_id)

    links = result_links(harness.storage, job, job.pages, "unused", expires_s=120)

    assert links["expires_at"] is not None
    for url, key in [
        (links["result_json"], result_json_key(job_id)),
        (links["pages"][0]["url"], page_json_key(job_id, 0)),
        (links["figures"][0]["url"], figure_key(job_id, "0_0.jpg")),
    ]:
        response = httpx.get(url)
        assert response.status_code == 200
        assert response.content == harness.storage.get_bytes(key)
    harness.database.dispose()


def add_delivery(
    harness: Harness, *, job_id: str | None = None, batch_id: str | None = None
) -> str:
    """Insert a delivery with one attempt for the job or batch; return the delivery id."""
    delivery_id = f"msg_{new_id()}"
    with harness.database.session() as session:
        session.add(
            WebhookDelivery(
                id=delivery_id,
                job_id=job_id,
                batch_id=batch_id,
                url="https://hooks.example/h",
                event_type="job.succeeded",
                payload='{"signed": "body"}',
                status="succeeded",
            )
        )
        session.flush()
        session.add(WebhookAttempt(delivery_id=delivery_id, number=1, status_code=200))
    return delivery_id


def delivery_rows(harness: Harness, delivery_ids: list[str]) -> tuple[int, int]:
    with harness.database.session() as session:
        deliveries = session.scalar(
            select(func.count()).where(WebhookDelivery.id.in_(delivery_ids))
        )
        attempts = session.scalar(
            select(func.count()).where(WebhookAttempt.delivery_id.in_(delivery_ids))
        )
    return int(deliveries or 0), int(attempts or 0)


def test_sweep_deletes_deliveries_of_expired_jobs_and_batches(
    harness: Harness, corpus_dir: Path
) -> None:
    batch_id = new_id()
    with harness.database.session() as session:
        session.add(Batch(id=batch_id, status="completed", jobs_total=1, finished_at=utcnow()))
    job_id = harness.insert_job(corpus_dir / "phototest.tif", batch_id=batch_id)
    process_job(job_id, harness.context)
    kept_job = finished_job(harness, corpus_dir)
    gone = [add_delivery(harness, job_id=job_id), add_delivery(harness, batch_id=batch_id)]
    with harness.database.session() as session:
        session.execute(
            update(Job).where(Job.id == kept_job).values(finished_at=utcnow() + timedelta(days=2))
        )
    kept = [add_delivery(harness, job_id=kept_job)]

    harness.service.sweep(now=utcnow() + timedelta(seconds=DAY_S + 60))

    assert delivery_rows(harness, gone) == (0, 0)
    assert delivery_rows(harness, kept) == (1, 1)


def test_deleting_a_job_deletes_its_deliveries(harness: Harness, corpus_dir: Path) -> None:
    job_id = finished_job(harness, corpus_dir)
    other_job = finished_job(harness, corpus_dir)
    gone = [add_delivery(harness, job_id=job_id)]
    kept = [add_delivery(harness, job_id=other_job)]

    harness.service.delete_job(job_id)

    assert delivery_rows(harness, gone) == (0, 0)
    assert delivery_rows(harness, kept) == (1, 1)

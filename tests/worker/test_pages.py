"""worker.pages and core.scheduling without a broker: claims, fair share, fencing, finishing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from core.celery_app import set_embedded_runner
from core.scheduling import PAGE_LEASE_TTL_S, claim_pages
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.tables import Page, Tenant, utcnow
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pages import (
    InputCache,
    PageLeaseLost,
    finish_job,
    plan_pages,
    process_next,
    write_claimed_page,
)


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = make_harness(make_settings(tenant_max_pages_in_flight=1), FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def running_job(harness: Harness, path: Path, pages: int, **values: object) -> str:
    """Insert a job as its first attempt leaves it: running, with one pending row per page."""
    job_id = harness.insert_job(
        path, status=JobStatus.RUNNING, attempt=1, pages_total=pages, **values
    )
    plan_pages(harness.context, job_id, pages)
    return job_id


def add_tenant(harness: Harness, name: str, limit: int | None = None) -> str:
    with harness.database.session() as session:
        tenant = Tenant(name=name, webhook_secret="unused", max_pages_in_flight=limit)
        session.add(tenant)
        session.flush()
        return tenant.id


def test_claim_prefers_high_priority_over_older_low_job(harness: Harness, corpus_dir: Path) -> None:
    low = running_job(harness, corpus_dir / "multipage.tiff", 3, priority="low")
    high = running_job(harness, corpus_dir / "phototest.tif", 1, priority="high")

    claim = claim_pages(harness.database, harness.settings)

    assert claim is not None
    assert (claim.job_id, claim.page_indexes) == (high, (0,))
    assert low != high


def test_tenant_at_limit_yields_to_another_tenant(harness: Harness, corpus_dir: Path) -> None:
    busy = add_tenant(harness, "busy")
    other = add_tenant(harness, "other")
    backlog = running_job(harness, corpus_dir / "multipage.tiff", 3, tenant_id=busy)
    single = running_job(harness, corpus_dir / "phototest.tif", 1, tenant_id=other)

    first = claim_pages(harness.database, harness.settings)
    second = claim_pages(harness.database, harness.settings)
    third = claim_pages(harness.database, harness.settings)

    assert first is not None and first.job_id == backlog
    assert second is not None and second.job_id == single
    # Both tenants are at their limit of one page in flight.
    assert third is None


def test_tenant_override_raises_its_limit(harness: Harness, corpus_dir: Path) -> None:
    tenant = add_tenant(harness, "big", limit=2)
    job_id = running_job(harness, corpus_dir / "multipage.tiff", 3, tenant_id=tenant)

    claims = [claim_pages(harness.database, harness.settings) for _ in range(3)]

    assert [claim.job_id if claim else None for claim in claims] == [job_id, job_id, None]


def test_tenants_take_turns_when_nothing_runs(harness: Harness, corpus_dir: Path) -> None:
    first_tenant = add_tenant(harness, "first")
    second_tenant = add_tenant(harness, "second")
    first = running_job(harness, corpus_dir / "multipage.tiff", 3, tenant_id=first_tenant)
    second = running_job(harness, corpus_dir / "multipage.tiff", 3, tenant_id=second_tenant)
    order = []
    for _ in range(4):
        outcome = process_next(harness.context, InputCache(harness.storage))
        order.append(outcome.job_id)

    assert order == [first, second, first, second]


def test_canceled_job_pages_are_not_claimed(harness: Harness, corpus_dir: Path) -> None:
    job_id = running_job(harness, corpus_dir / "multipage.tiff", 3)
    harness.service.cancel_job(job_id)

    outcome = process_next(harness.context, InputCache(harness.storage))

    assert (outcome.ran, outcome.waiting) == (False, 0)


def test_page_of_dead_worker_is_claimed_again(harness: Harness, corpus_dir: Path) -> None:
    job_id = running_job(harness, corpus_dir / "phototest.tif", 1)
    dead = claim_pages(harness.database, harness.settings)
    assert dead is not None
    assert claim_pages(harness.database, harness.settings) is None

    with harness.database.session() as session:
        stale = utcnow() - timedelta(seconds=PAGE_LEASE_TTL_S + 1)
        session.execute(update(Page).where(Page.job_id == job_id).values(heartbeat_at=stale))
    outcome = process_next(harness.context, InputCache(harness.storage))

    assert outcome.job_status == JobStatus.SUCCEEDED
    with harness.database.session() as session:
        page = session.scalars(select(Page).where(Page.job_id == job_id)).one()
    assert (page.lease_token, page.status) == (2, PageStatus.SUCCEEDED)


def test_page_claimed_too_often_fails_alone(
    make_settings: Callable[..., Settings], corpus_dir: Path
) -> None:
    harness = make_harness(make_settings(max_attempts=2), FakeEngine())
    job_id = running_job(harness, corpus_dir / "multipage.tiff", 3)
    with harness.database.session() as session:
        session.execute(
            update(Page).where(Page.job_id == job_id, Page.page_index == 1).values(attempts=2)
        )

    statuses = [
        process_next(harness.context, InputCache(harness.storage)).job_status for _ in range(3)
    ]
    set_embedded_runner(None)

    job = harness.service.get_job(job_id)
    assert statuses[-1] == JobStatus.PARTIAL
    assert [page.error_code for page in sorted(job.pages, key=lambda p: p.page_index)] == [
        None,
        "page_attempts_exhausted",
        None,
    ]


def test_late_write_of_reclaimed_page_is_dropped(harness: Harness, corpus_dir: Path) -> None:
    job_id = running_job(harness, corpus_dir / "phototest.tif", 1)
    old = claim_pages(harness.database, harness.settings)
    with harness.database.session() as session:
        stale = utcnow() - timedelta(seconds=PAGE_LEASE_TTL_S + 1)
        session.execute(update(Page).where(Page.job_id == job_id).values(heartbeat_at=stale))
    new = claim_pages(harness.database, harness.settings)

    assert old is not None and new is not None
    assert new.tokens[0] == old.tokens[0] + 1
    with pytest.raises(PageLeaseLost):
        write_claimed_page(harness.context, job_id, 0, old.tokens[0], {"status": "succeeded"})


def test_concurrent_pages_on_postgresql_finish_job_once(
    make_settings: Callable[..., Settings], postgres_url: str, corpus_dir: Path
) -> None:
    """Four threads race through a 3-page job; exactly one of them finishes it."""
    harness = make_harness(make_settings(database_url=postgres_url), FakeEngine())
    job_id = running_job(harness, corpus_dir / "multipage.tiff", 3)
    inputs = InputCache(harness.storage)

    def drain(_: int) -> list[str | None]:
        statuses = []
        while (outcome := process_next(harness.context, inputs, job_id=job_id)).ran:
            statuses.append(outcome.job_status)
        return statuses

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = [status for run in pool.map(drain, range(4)) for status in run]
    set_embedded_runner(None)

    job = harness.service.get_job(job_id)
    assert [status for status in statuses if status] == [JobStatus.SUCCEEDED]
    assert (job.status, job.pages_done) == (JobStatus.SUCCEEDED, 3)
    assert finish_job(harness.context, job_id) is None
    harness.database.dispose()

"""The webhook outbox (core/outbox.py) and its delivery worker (worker/webhooks.py).

Deliveries go to a receiver on 127.0.0.1 that verifies every signature. Time moves through an
injected clock, so retry schedules of minutes run without sleeping.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from core import webhooks
from core.db import Database, upgrade_database
from core.jobs import JobService
from core.outbox import (
    maybe_complete_batch,
    record_job_finished,
    set_embedded_deliverer,
    wake_if_due,
)
from core.settings import Settings
from core.states import JobStatus
from core.storage import open_storage
from core.tables import (
    Batch,
    Job,
    Tenant,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    new_id,
    utcnow,
)
from tests.conftest import PostgresServer
from tests.webhook_receiver import run_receiver
from tests.worker.fakes import FakeEngine, make_harness
from worker.pipeline import process_job
from worker.webhooks import CLAIM_TTL_S, DeliveryContext, claim_due, deliver_due

SECRET = webhooks.generate_secret()


class FakeClock:
    """A clock that starts a second ahead of the real time and moves only when advanced.

    The lead makes rows written by the test after the clock was built due at once.
    """

    def __init__(self) -> None:
        self.now = utcnow() + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def seconds(self) -> float:
        return self.now.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(scope="module")
def database_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database()
    upgrade_database(url)
    return url


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(
        database_url=database_url, webhook_secret=SECRET, url_allowlist="127.0.0.1"
    )


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    built = Database(database_url)
    yield built
    # Rows of earlier tests must not be due in later ones.
    with built.session() as session:
        session.query(WebhookDelivery).delete()
    built.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def context(settings: Settings, database: Database, clock: FakeClock) -> DeliveryContext:
    return DeliveryContext(settings, database, clock=clock, rng=random.Random(7))


def insert_job(database: Database, status: str = JobStatus.RUNNING, **values: object) -> str:
    job_id = new_id()
    with database.session() as session:
        session.add(
            Job(
                id=job_id,
                status=status,
                engine="fake",
                mode="gundam",
                task="markdown",
                media_type="image/png",
                input_key=f"jobs/{job_id}/input",
                size_bytes=1,
                pages_total=1,
                pages_done=1,
                attempt=1,
                **values,
            )
        )
    return job_id


def finish_job(database: Database, settings: Settings, job_id: str, status: str) -> None:
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = status
        job.finished_at = utcnow()
        record_job_finished(session, job_id, settings)


def insert_tenant(database: Database) -> Tenant:
    tenant = Tenant(
        name=f"tenant-{uuid.uuid4().hex[:8]}", webhook_secret=webhooks.generate_secret()
    )
    with database.session() as session:
        session.add(tenant)
    return tenant


def job_deliveries(database: Database, job_id: str) -> list[WebhookDelivery]:
    with database.session() as session:
        statement = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
        return list(session.scalars(statement))


def attempts_of(database: Database, delivery_id: str) -> list[WebhookAttempt]:
    with database.session() as session:
        statement = (
            select(WebhookAttempt)
            .where(WebhookAttempt.delivery_id == delivery_id)
            .order_by(WebhookAttempt.number)
        )
        return list(session.scalars(statement))


def test_delivery_retried_after_two_500s_is_delivered_once(
    context: DeliveryContext, settings: Settings, database: Database, clock: FakeClock
) -> None:
    with run_receiver(SECRET, script=[500, 500], clock_s=clock.seconds) as receiver:
        job_id = insert_job(database, webhook_url=receiver.url)
        finish_job(database, settings, job_id, JobStatus.SUCCEEDED)

        first = deliver_due(context)
        early = deliver_due(context)  # the retry is 5 s away
        clock.advance(6)
        second = deliver_due(context)
        clock.advance(5 * 60 * 1.1 + 1)
        third = deliver_due(context)
        clock.advance(3 * 24 * 3600)
        after = deliver_due(context)

    assert [run.attempted for run in (first, early, second, third, after)] == [1, 0, 1, 1, 0]
    assert first.follow_up_in_s is not None and 4.5 <= first.follow_up_in_s <= 5.5
    assert [item.answered for item in receiver.received] == [500, 500, 200]
    assert all(item.verified for item in receiver.received)
    assert len({item.headers["webhook-id"] for item in receiver.received}) == 1
    assert len({item.body for item in receiver.received}) == 1
    event = receiver.accepted[0].event
    assert event["type"] == "job.succeeded"
    assert event["data"]["job_id"] == job_id
    assert event["data"]["result_url"].endswith(f"/v1/jobs/{job_id}/result")

    (delivery,) = job_deliveries(database, job_id)
    assert (delivery.status, delivery.attempts, delivery.next_attempt_at) == ("succeeded", 3, None)
    logged = attempts_of(database, delivery.id)
    assert [(row.number, row.status_code) for row in logged] == [(1, 500), (2, 500), (3, 200)]


def test_endpoint_answering_410_is_disabled(
    context: DeliveryContext, settings: Settings, database: Database, clock: FakeClock
) -> None:
    tenant = insert_tenant(database)
    endpoint_secret = webhooks.generate_secret()
    with run_receiver(endpoint_secret, script=[410], clock_s=clock.seconds) as receiver:
        with database.session() as session:
            endpoint = WebhookEndpoint(
                tenant_id=tenant.id, url=receiver.url, secret=endpoint_secret
            )
            session.add(endpoint)
        job_id = insert_job(database, tenant_id=tenant.id)
        finish_job(database, settings, job_id, JobStatus.FAILED)

        deliver_due(context)
        later_job = insert_job(database, tenant_id=tenant.id)
        finish_job(database, settings, later_job, JobStatus.SUCCEEDED)

    assert [item.answered for item in receiver.received] == [410]
    assert receiver.received[0].event["type"] == "job.failed"
    (delivery,) = job_deliveries(database, job_id)
    assert (delivery.status, delivery.next_attempt_at) == ("failed", None)
    with database.session() as session:
        stored = session.get(WebhookEndpoint, endpoint.id)
        assert stored is not None and stored.disabled_at is not None
    assert job_deliveries(database, later_job) == []


@pytest.mark.parametrize(
    ("allowlist", "target"),
    [("", "receiver"), ("127.0.0.1", "http://169.254.169.254/latest/meta-data/")],
)
def test_target_outside_allowlist_is_refused_and_recorded(
    make_settings: Callable[..., Settings],
    database_url: str,
    database: Database,
    clock: FakeClock,
    allowlist: str,
    target: str,
) -> None:
    settings = make_settings(
        database_url=database_url, webhook_secret=SECRET, url_allowlist=allowlist
    )
    context = DeliveryContext(settings, database, clock=clock)
    with run_receiver(SECRET, clock_s=clock.seconds) as receiver:
        url = receiver.url if target == "receiver" else target
        job_id = insert_job(database, webhook_url=url)
        finish_job(database, settings, job_id, JobStatus.SUCCEEDED)
        deliver_due(context)

    assert receiver.received == []
    (delivery,) = job_deliveries(database, job_id)
    assert delivery.status == "failed"
    (attempt,) = attempts_of(database, delivery.id)
    assert attempt.status_code is None
    assert attempt.error is not None and "OCRQ_URL_ALLOWLIST" in attempt.error


def test_outbox_rows_roll_back_with_the_state_change(
    settings: Settings, database: Database
) -> None:
    job_id = insert_job(database, webhook_url="http://127.0.0.1:9/hook")

    with pytest.raises(RuntimeError), database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.SUCCEEDED
        record_job_finished(session, job_id, settings)
        assert len(session.scalars(select(WebhookDelivery)).all()) == 1
        raise RuntimeError("the transaction fails after the outbox write")

    assert job_deliveries(database, job_id) == []
    assert JobService(settings, database, open_storage(settings)).get_job(job_id).status == (
        JobStatus.RUNNING
    )


def test_poller_sends_event_after_lost_wakeup(
    context: DeliveryContext, settings: Settings, database: Database, clock: FakeClock
) -> None:
    """A worker killed after the state change commit, before any delivery, loses no event."""
    with run_receiver(SECRET, clock_s=clock.seconds) as receiver:
        job_id = insert_job(database, webhook_url=receiver.url)
        set_embedded_deliverer(None)  # the wake-up after the commit has no deliverer to call
        finish_job(database, settings, job_id, JobStatus.PARTIAL)
        assert receiver.received == []

        set_embedded_deliverer(lambda: deliver_due(context))
        try:
            found = wake_if_due(settings, database)
        finally:
            set_embedded_deliverer(None)

    assert found is True
    assert [item.event["type"] for item in receiver.accepted] == ["job.partial"]
    assert job_deliveries(database, job_id)[0].status == "succeeded"


def test_expired_claim_is_sent_once(
    context: DeliveryContext, settings: Settings, database: Database, clock: FakeClock
) -> None:
    with run_receiver(SECRET, clock_s=clock.seconds) as receiver:
        job_id = insert_job(database, webhook_url=receiver.url)
        finish_job(database, settings, job_id, JobStatus.SUCCEEDED)
        assert len(claim_due(context)) == 1  # this worker dies before sending

        during_claim = deliver_due(context)
        clock.advance(CLAIM_TTL_S + 1)
        after_claim = deliver_due(context)

    assert (during_claim.attempted, after_claim.attempted) == (0, 1)
    assert len(receiver.accepted) == 1


def test_cancel_records_and_delivers_job_canceled(
    context: DeliveryContext, settings: Settings, database: Database, clock: FakeClock
) -> None:
    service = JobService(settings, database, open_storage(settings))
    with run_receiver(SECRET, clock_s=clock.seconds) as receiver:
        job_id = insert_job(database, status=JobStatus.QUEUED, webhook_url=receiver.url)
        service.cancel_job(job_id)
        deliver_due(context)

    (received,) = receiver.accepted
    assert received.event["type"] == "job.canceled"
    assert received.event["data"]["status"] == "canceled"


def test_last_batch_job_completes_batch(settings: Settings, database: Database) -> None:
    batch = Batch(status="running", jobs_total=2, webhook_url="http://127.0.0.1:9/batch")
    with database.session() as session:
        session.add(batch)
    first = insert_job(database, batch_id=batch.id)
    second = insert_job(database, batch_id=batch.id)

    finish_job(database, settings, first, JobStatus.SUCCEEDED)
    with database.session() as session:
        assert maybe_complete_batch(session, batch.id, settings) is False
    finish_job(database, settings, second, JobStatus.FAILED)

    with database.session() as session:
        stored = session.get(Batch, batch.id)
        events = session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.event_type == "batch.completed")
        ).all()
    assert stored is not None and stored.status == "completed"
    (event,) = [json.loads(row.payload) for row in events if row.batch_id == batch.id]
    assert event["data"]["counters"] == {"jobs_total": 2, "succeeded": 1, "failed": 1}


def test_pipeline_finish_writes_job_succeeded_on_sqlite(
    make_settings: Callable[..., Settings], corpus_dir: Path, clock: FakeClock
) -> None:
    settings = make_settings(pdf_render_dpi=36, webhook_secret=SECRET, url_allowlist="127.0.0.1")
    harness = make_harness(settings, FakeEngine())
    context = DeliveryContext(settings, harness.database, clock=clock)
    try:
        with run_receiver(SECRET, clock_s=clock.seconds) as receiver:
            job_id = harness.insert_job(corpus_dir / "phototest.tif", webhook_url=receiver.url)
            process_job(job_id, harness.context)
            assert len(job_deliveries(harness.database, job_id)) == 1
            deliver_due(context)
    finally:
        harness.database.dispose()

    (received,) = receiver.accepted
    assert received.event["type"] == "job.succeeded"
    assert received.event["data"]["counters"] == {"pages_total": 1, "pages_done": 1}


def test_receiver_rejects_tampered_body_and_stale_timestamp() -> None:
    body = webhooks.encode_event(
        webhooks.build_event(
            "job.failed", status="failed", counters={}, result_url=None, job_id="j1"
        )
    )
    now_s = int(utcnow().timestamp())
    with run_receiver(SECRET) as receiver:
        good = webhooks.build_headers(SECRET, "msg_1", now_s, body)
        stale = webhooks.build_headers(SECRET, "msg_1", now_s - 600, body)
        statuses = [
            httpx.post(receiver.url, content=body, headers=good).status_code,
            httpx.post(receiver.url, content=body + b" ", headers=good).status_code,
            httpx.post(receiver.url, content=body, headers=stale).status_code,
        ]

    assert statuses == [200, 400, 400]
    assert [item.verified for item in receiver.received] == [True, False, False]


def test_wake_up_runs_after_commit_and_not_after_rollback(
    settings: Settings, database: Database
) -> None:
    wakes: list[int] = []

    def count_deliveries() -> None:
        # The rows must already be committed when the deliverer looks for them.
        with database.session() as session:
            wakes.append(len(session.scalars(select(WebhookDelivery.id)).all()))

    set_embedded_deliverer(count_deliveries)
    try:
        committed = insert_job(database, webhook_url="http://127.0.0.1:9/hook")
        finish_job(database, settings, committed, JobStatus.SUCCEEDED)
        rolled_back = insert_job(database, webhook_url="http://127.0.0.1:9/hook")
        with pytest.raises(RuntimeError), database.session() as session:
            job = session.get(Job, rolled_back)
            assert job is not None
            job.status = JobStatus.SUCCEEDED
            record_job_finished(session, rolled_back, settings)
            raise RuntimeError("the transaction fails after the outbox write")
    finally:
        set_embedded_deliverer(None)

    assert wakes == [1]

"""Routes of api/routes/webhooks.py: deliveries with their attempts, redelivery, endpoints."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
import redis
from fastapi.testclient import TestClient

from core import webhooks
from core.db import Database
from core.outbox import QUEUE_WEBHOOKS, record_job_finished
from core.settings import Settings
from core.states import JobStatus
from core.tables import Batch, Job, WebhookAttempt, WebhookDelivery, new_id, utcnow
from core.tenants import find_tenant


@dataclass
class TenantClient:
    """A test client authenticated as one tenant, with that tenant's id."""

    client: TestClient
    tenant_id: str


@pytest.fixture
def database(api_database_url: str) -> Iterator[Database]:
    built = Database(api_database_url)
    yield built
    built.dispose()


@pytest.fixture
def make_tenant_client(
    make_client: Callable[..., TestClient],
    make_api_key: Callable[..., str],
    database: Database,
) -> Callable[..., TenantClient]:
    def build(**overrides: object) -> TenantClient:
        name = f"tenant-{uuid.uuid4().hex[:12]}"
        client = make_client(api_key=make_api_key(name), **overrides)
        tenant = find_tenant(database, name)
        assert tenant is not None
        return TenantClient(client, tenant.id)

    return build


@pytest.fixture
def webhook_queue(redis_url: str) -> Iterator[Callable[[], int]]:
    """Return a function counting the messages waiting in the broker's ocrq.webhooks queue."""
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE_WEBHOOKS)
    yield lambda: int(client.llen(QUEUE_WEBHOOKS))
    client.delete(QUEUE_WEBHOOKS)
    client.close()


def finished_job(database: Database, settings: Settings, tenant_id: str) -> tuple[str, str]:
    """Commit a succeeded job of the tenant with its outbox row; return (job id, delivery id)."""
    job_id = new_id()
    with database.session() as session:
        session.add(
            Job(
                id=job_id,
                status=JobStatus.SUCCEEDED,
                engine="rapidocr",
                mode="gundam",
                task="markdown",
                media_type="image/png",
                input_key=f"jobs/{job_id}/input",
                size_bytes=1,
                pages_total=1,
                pages_done=1,
                tenant_id=tenant_id,
                webhook_url="http://127.0.0.1:9/hook",
                finished_at=utcnow(),
            )
        )
        record_job_finished(session, job_id, settings)
    with database.session() as session:
        delivery_id = session.query(WebhookDelivery.id).filter_by(job_id=job_id).scalar()
    assert delivery_id is not None
    return job_id, delivery_id


def test_read_job_deliveries_lists_attempts(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
) -> None:
    caller = make_tenant_client()
    job_id, delivery_id = finished_job(database, api_settings(), caller.tenant_id)
    with database.session() as session:
        session.add(
            WebhookAttempt(delivery_id=delivery_id, number=1, status_code=500, duration_ms=12)
        )

    response = caller.client.get(f"/v1/jobs/{job_id}/deliveries")

    assert response.status_code == 200
    (delivery,) = response.json()["data"]
    assert delivery["id"] == delivery_id
    assert delivery["event_type"] == "job.succeeded"
    assert delivery["status"] == "pending"
    assert [(row["number"], row["status_code"]) for row in delivery["attempt_log"]] == [(1, 500)]


def test_read_job_deliveries_of_other_tenant_is_404(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
) -> None:
    owner = make_tenant_client()
    other = make_tenant_client()
    job_id, delivery_id = finished_job(database, api_settings(), owner.tenant_id)

    listed = other.client.get(f"/v1/jobs/{job_id}/deliveries")
    redelivered = other.client.post(f"/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver")

    assert listed.status_code == 404
    assert listed.json()["detail"]["code"] == "job_not_found"
    assert redelivered.status_code == 404


def test_redeliver_rearms_the_same_event(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
    webhook_queue: Callable[[], int],
) -> None:
    caller = make_tenant_client()
    job_id, delivery_id = finished_job(database, api_settings(), caller.tenant_id)
    with database.session() as session:
        delivery = session.get(WebhookDelivery, delivery_id)
        assert delivery is not None
        delivery.status = "failed"
        delivery.next_attempt_at = None
        payload = delivery.payload
    woken_before = webhook_queue()  # one wake-up per commit that wrote outbox rows

    response = caller.client.post(f"/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver")

    assert response.status_code == 202
    assert response.json()["id"] == delivery_id
    assert response.json()["status"] == "pending"
    with database.session() as session:
        stored = session.get(WebhookDelivery, delivery_id)
    assert stored is not None
    assert stored.status == "pending"
    assert stored.next_attempt_at is not None
    assert stored.payload == payload
    assert woken_before == 1
    assert webhook_queue() == 2


def test_unknown_delivery_of_a_job_is_404(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
) -> None:
    caller = make_tenant_client()
    job_id, _delivery_id = finished_job(database, api_settings(), caller.tenant_id)

    response = caller.client.post(f"/v1/jobs/{job_id}/deliveries/msg_unknown/redeliver")

    assert response.status_code == 404
    assert response.json()["detail"]["code"] == "delivery_not_found"


def test_endpoint_secret_is_returned_only_on_create(
    make_tenant_client: Callable[..., TenantClient],
) -> None:
    caller = make_tenant_client(url_allowlist="127.0.0.1")

    created = caller.client.post("/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"})
    listed = caller.client.get("/v1/webhooks/endpoints")

    assert created.status_code == 201
    secret = created.json()["secret"]
    webhooks.decode_secret(secret)  # a valid whsec_ secret
    (endpoint,) = listed.json()["data"]
    assert endpoint["id"] == created.json()["id"]
    assert "secret" not in endpoint


def test_endpoint_delete_is_scoped_to_tenant(
    make_tenant_client: Callable[..., TenantClient],
) -> None:
    owner = make_tenant_client(url_allowlist="127.0.0.1")
    other = make_tenant_client(url_allowlist="127.0.0.1")
    endpoint_id = owner.client.post(
        "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"}
    ).json()["id"]

    foreign = other.client.delete(f"/v1/webhooks/endpoints/{endpoint_id}")
    own = owner.client.delete(f"/v1/webhooks/endpoints/{endpoint_id}")

    assert foreign.status_code == 404
    assert own.status_code == 204
    assert owner.client.get("/v1/webhooks/endpoints").json()["data"] == []


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/", "http://127.0.0.1:9/h"])
def test_endpoint_on_blocked_address_is_rejected(
    make_tenant_client: Callable[..., TenantClient], url: str
) -> None:
    caller = make_tenant_client(url_allowlist="")

    response = caller.client.post("/v1/webhooks/endpoints", json={"url": url})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "url_not_allowed"


def test_batch_deliveries_list_batch_completed(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
) -> None:
    caller = make_tenant_client()
    other = make_tenant_client()
    batch = Batch(
        tenant_id=caller.tenant_id,
        status="running",
        jobs_total=1,
        webhook_url="http://127.0.0.1:9/batch",
    )
    with database.session() as session:
        session.add(batch)
    job_id = new_id()
    with database.session() as session:
        session.add(
            Job(
                id=job_id,
                status=JobStatus.CANCELED,
                engine="rapidocr",
                mode="gundam",
                task="markdown",
                media_type="image/png",
                input_key=f"jobs/{job_id}/input",
                size_bytes=1,
                tenant_id=caller.tenant_id,
                batch_id=batch.id,
            )
        )
        record_job_finished(session, job_id, api_settings())

    response = caller.client.get(f"/v1/batches/{batch.id}/deliveries")
    hidden = other.client.get(f"/v1/batches/{batch.id}/deliveries")

    assert response.status_code == 200
    (delivery,) = response.json()["data"]
    assert delivery["event_type"] == "batch.completed"
    assert hidden.status_code == 404


@pytest.mark.parametrize("url", ["http://a..b/hook", "http://exa mple.com/", "ftp://host/"])
def test_endpoint_with_invalid_url_is_422(
    make_tenant_client: Callable[..., TenantClient], url: str
) -> None:
    caller = make_tenant_client()

    response = caller.client.post("/v1/webhooks/endpoints", json={"url": url})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] in {"invalid_webhook_url", "invalid_url"}


def test_endpoint_create_replays_idempotency_key(
    make_tenant_client: Callable[..., TenantClient],
) -> None:
    caller = make_tenant_client(url_allowlist="127.0.0.1")
    headers = {"Idempotency-Key": "endpoint-1"}

    first = caller.client.post(
        "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"}, headers=headers
    )
    replay = caller.client.post(
        "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/h"}, headers=headers
    )
    conflict = caller.client.post(
        "/v1/webhooks/endpoints", json={"url": "http://127.0.0.1:9/other"}, headers=headers
    )

    assert first.status_code == 201
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]
    assert replay.json()["secret"] == first.json()["secret"]
    assert conflict.status_code == 409
    assert conflict.json()["detail"]["code"] == "idempotency_key_reused"
    assert len(caller.client.get("/v1/webhooks/endpoints").json()["data"]) == 1


def test_redeliver_replay_does_not_send_again(
    make_tenant_client: Callable[..., TenantClient],
    api_settings: Callable[..., Settings],
    database: Database,
    webhook_queue: Callable[[], int],
) -> None:
    caller = make_tenant_client()
    job_id, delivery_id = finished_job(database, api_settings(), caller.tenant_id)
    path = f"/v1/jobs/{job_id}/deliveries/{delivery_id}/redeliver"
    headers = {"Idempotency-Key": "redeliver-1"}
    woken_before = webhook_queue()

    first = caller.client.post(path, headers=headers)
    with database.session() as session:
        stored = session.get(WebhookDelivery, delivery_id)
        assert stored is not None
        stored.status = "succeeded"  # as if the worker delivered it in between
    replay = caller.client.post(path, headers=headers)

    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["id"] == delivery_id
    assert replay.json()["status"] == "succeeded"
    assert webhook_queue() == woken_before + 1

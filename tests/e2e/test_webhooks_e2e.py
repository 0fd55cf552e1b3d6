"""Webhooks end to end: a real `ocrq worker` sends job.succeeded to receivers on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from core.celery_app import QUEUE_NAMES
from core.db import Database
from core.outbox import QUEUE_WEBHOOKS
from core.tenants import find_tenant
from tests.e2e.conftest import Stack
from tests.webhook_receiver import WebhookReceiver, run_receiver

pytestmark = pytest.mark.services

DELIVERY_TIMEOUT_S = 120.0


def wait_for_accepted(receivers: list[WebhookReceiver], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(receiver.accepted for receiver in receivers):
            return
        time.sleep(0.2)


def tenant_secret(stack: Stack) -> str:
    database = Database(stack.database_url)
    tenant = find_tenant(database, "e2e")
    database.dispose()
    assert tenant is not None
    return tenant.webhook_secret


def test_worker_delivers_job_succeeded_to_url_and_endpoint(stack: Stack, corpus_dir: Path) -> None:
    """The job's webhook_url and the tenant's endpoint each get one verified job.succeeded."""
    stack.env["OCRQ_URL_ALLOWLIST"] = "127.0.0.1"
    stack.start_api()
    # OCR and delivery in separate workers, so the delivery must go through queue ocrq.webhooks.
    stack.start("worker", "worker", "--pool", "solo", "--queues", ",".join(QUEUE_NAMES))
    stack.start("webhooks", "worker", "--pool", "solo", "--queues", QUEUE_WEBHOOKS)
    headers = {"Authorization": f"Bearer {stack.api_key}"}

    # The endpoint receiver gets its secret from the API once the endpoint exists.
    with (
        run_receiver(tenant_secret(stack)) as job_receiver,
        run_receiver("") as endpoint_receiver,
    ):
        endpoint = httpx.post(
            f"{stack.api_url}/v1/webhooks/endpoints",
            json={"url": endpoint_receiver.url},
            headers=headers,
        ).json()
        endpoint_receiver.secret = endpoint["secret"]

        with stack.client() as client:
            job_id = client.submit(corpus_dir / "phototest.tif", webhook_url=job_receiver.url)["id"]
            job = client.wait(job_id, DELIVERY_TIMEOUT_S, progress=False)
        wait_for_accepted([job_receiver, endpoint_receiver], DELIVERY_TIMEOUT_S)
        time.sleep(0.5)  # gives a duplicate delivery, if any, time to arrive

    assert job["status"] == "succeeded"
    for receiver in (job_receiver, endpoint_receiver):
        assert [item.verified for item in receiver.received] == [True]
        (received,) = receiver.accepted
        assert received.event["type"] == "job.succeeded"
        assert received.event["data"]["job_id"] == job_id
    deliveries = httpx.get(f"{stack.api_url}/v1/jobs/{job_id}/deliveries", headers=headers).json()
    assert sorted(row["status"] for row in deliveries["data"]) == ["succeeded", "succeeded"]
    assert all(len(row["attempt_log"]) == 1 for row in deliveries["data"])

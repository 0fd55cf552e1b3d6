"""A 50-document batch through the client, a real Celery worker and the batch webhook."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from core.db import Database
from core.tenants import find_tenant
from tests.e2e.conftest import Stack
from tests.webhook_receiver import WebhookReceiver, run_receiver

pytestmark = pytest.mark.services

DOCUMENTS = 50
BATCH_TIMEOUT_S = 420.0
DELIVERY_TIMEOUT_S = 60.0
WORDS = ("invoice", "harbour", "quartz", "meadow", "lantern")


def write_word_pngs(folder: Path, count: int) -> list[Path]:
    """Write `count` 200x60 PNGs with one word each, small so the batch stays quick to read."""
    font = ImageFont.load_default(size=28)
    paths = []
    for index in range(count):
        image = Image.new("RGB", (200, 60), "white")
        ImageDraw.Draw(image).text((12, 14), WORDS[index % len(WORDS)], fill="black", font=font)
        path = folder / f"word-{index:02d}.png"
        image.save(path)
        paths.append(path)
    return paths


def tenant_secret(stack: Stack) -> str:
    database = Database(stack.database_url)
    tenant = find_tenant(database, "e2e")
    database.dispose()
    assert tenant is not None
    return tenant.webhook_secret


def wait_for_batch_event(receiver: WebhookReceiver, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(item.event["type"] == "batch.completed" for item in receiver.accepted):
            return
        time.sleep(0.2)


def test_batch_of_50_finishes_with_matching_batch_webhook(stack: Stack, tmp_path: Path) -> None:
    stack.env["OCRQ_URL_ALLOWLIST"] = "127.0.0.1"
    stack.start_api()
    stack.start_worker()
    paths = write_word_pngs(tmp_path, DOCUMENTS)

    with run_receiver(tenant_secret(stack)) as receiver, stack.client() as client:
        created = client.create_batch(paths, mode="tiny", webhook_url=receiver.url)
        ended = client.wait_batch(created["id"], BATCH_TIMEOUT_S, progress=True)
        wait_for_batch_event(receiver, DELIVERY_TIMEOUT_S)
        time.sleep(0.5)  # gives a duplicate delivery, if any, time to arrive
        listed = client.get_batch(created["id"], limit=DOCUMENTS)

    assert ended["status"] == "completed"
    assert ended["counts"]["succeeded"] == DOCUMENTS
    batch_events = [item for item in receiver.accepted if item.event["type"] == "batch.completed"]
    assert len(batch_events) == 1
    assert all(item.verified for item in receiver.received)
    data = batch_events[0].event["data"]
    assert data["batch_id"] == created["id"]
    job_statuses = [job["status"] for job in listed["jobs"]]
    assert len(job_statuses) == DOCUMENTS
    for status in ("succeeded", "partial", "failed", "canceled"):
        assert data["counters"].get(status, 0) == job_statuses.count(status)
    assert data["counters"]["jobs_total"] == DOCUMENTS

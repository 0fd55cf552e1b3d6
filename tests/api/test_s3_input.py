"""S3 inputs: the bucket allow-list at submit time and the worker's read with the service's keys."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable, Iterator

import boto3
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job

pytestmark = pytest.mark.services


@pytest.fixture
def input_bucket(s3_endpoint_url: str) -> str:
    """A new bucket on the moto server, for documents clients point at."""
    name = f"inputs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=name
    )
    return name


@pytest.fixture
def harness(
    make_settings: Callable[..., Settings], s3_endpoint_url: str, input_bucket: str
) -> Iterator[Harness]:
    settings = make_settings(s3_endpoint_url=s3_endpoint_url, s3_input_buckets=input_bucket)
    built = make_harness(settings, FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def put_object(endpoint_url: str, bucket: str, key: str, data: bytes) -> None:
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    s3.put_object(Bucket=bucket, Key=key, Body=data)


def png_bytes(make_page_image: Callable[..., Image.Image]) -> bytes:
    buffer = io.BytesIO()
    make_page_image().save(buffer, format="PNG")
    return buffer.getvalue()


def test_submit_s3_from_allowed_bucket_is_queued(
    make_client: Callable[..., TestClient],
    broker_queue: Callable[[], list[str]],
    input_bucket: str,
) -> None:
    client = make_client(s3_input_buckets=input_bucket)

    response = client.post("/v1/jobs", json={"s3": {"bucket": input_bucket, "key": "a.png"}})

    assert response.status_code == 202
    assert broker_queue() == [response.json()["id"]]


def test_submit_s3_from_other_bucket_is_refused(
    make_client: Callable[..., TestClient],
    broker_queue: Callable[[], list[str]],
    input_bucket: str,
) -> None:
    client = make_client(s3_input_buckets=input_bucket)

    response = client.post("/v1/jobs", json={"s3": {"bucket": "ocrq-test", "key": "a.png"}})

    assert response.status_code == 422
    assert response.json()["detail"]["code"] == "bucket_not_allowed"
    assert broker_queue() == []


def test_s3_job_is_read_and_processed(
    harness: Harness,
    s3_endpoint_url: str,
    input_bucket: str,
    make_page_image: Callable[..., Image.Image],
) -> None:
    put_object(s3_endpoint_url, input_bucket, "scans/page.png", png_bytes(make_page_image))
    source = {"type": "s3", "bucket": input_bucket, "key": "scans/page.png"}
    job = harness.service.create_job(None, source=source)

    outcome = process_job(job.id, harness.context)

    assert outcome.status == JobStatus.SUCCEEDED
    assert harness.service.get_job(job.id).media_type == "image/png"


def test_s3_object_over_size_limit_fails_before_download(
    make_settings: Callable[..., Settings],
    s3_endpoint_url: str,
    input_bucket: str,
    make_page_image: Callable[..., Image.Image],
) -> None:
    data = png_bytes(make_page_image)
    settings = make_settings(
        s3_endpoint_url=s3_endpoint_url, s3_input_buckets=input_bucket, max_file_bytes=len(data) - 1
    )
    small = make_harness(settings, FakeEngine())
    put_object(s3_endpoint_url, input_bucket, "big.png", data)
    job = small.service.create_job(
        None, source={"type": "s3", "bucket": input_bucket, "key": "big.png"}
    )

    outcome = process_job(job.id, small.context)

    set_embedded_runner(None)
    assert outcome.status == JobStatus.FAILED
    assert small.service.get_job(job.id).error_code == "file_too_large"
    small.database.dispose()


def test_s3_missing_object_fails_the_job(harness: Harness, input_bucket: str) -> None:
    job = harness.service.create_job(
        None, source={"type": "s3", "bucket": input_bucket, "key": "absent.png"}
    )

    outcome = process_job(job.id, harness.context)

    assert outcome.status == JobStatus.FAILED
    assert harness.service.get_job(job.id).error_code == "s3_object_not_found"

"""worker.inputs and the pipeline on inputs other than a plain upload."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from core.celery_app import set_embedded_runner
from core.settings import Settings
from core.states import JobStatus
from tests.worker.fakes import FakeEngine, Harness, make_harness
from worker.pipeline import process_job


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    built = make_harness(make_settings(), FakeEngine())
    yield built
    set_embedded_runner(None)
    built.database.dispose()


def test_password_pdf_job_needs_no_worker_password(
    harness: Harness, corpus_dir: Path
) -> None:
    """A broker worker is never handed the password; the stored copy is decrypted."""
    job = harness.service.create_job(corpus_dir / "skew-encrypted.pdf", password="password")

    outcome = process_job(job.id, harness.context)

    assert outcome.status == JobStatus.SUCCEEDED
    assert harness.service.get_job(job.id).source == {"type": "upload", "pdf_decrypted": True}

"""Job and page states and the transitions between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_JOB_STATES


FINAL_JOB_STATES = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.PARTIAL, JobStatus.FAILED, JobStatus.CANCELED}
)


class PageStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


def final_job_status(page_statuses: list[PageStatus]) -> JobStatus:
    """Return the job status implied by its finished pages: all good, some good, or none."""
    if not page_statuses:
        return JobStatus.FAILED
    succeeded = sum(1 for status in page_statuses if status == PageStatus.SUCCEEDED)
    if succeeded == len(page_statuses):
        return JobStatus.SUCCEEDED
    if succeeded == 0:
        return JobStatus.FAILED
    return JobStatus.PARTIAL

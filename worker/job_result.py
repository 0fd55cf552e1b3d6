"""Store a job's result.json and result.md, and record its final status under the lease."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlalchemy import select

from core.logging import elapsed_ms, get_logger
from core.outbox import record_job_finished
from core.results import build_result
from core.states import JobStatus, PageStatus, final_job_status
from core.storage import result_json_key, result_markdown_key
from core.tables import Page, utcnow
from worker.context import PipelineContext
from worker.lease import Lease, LeaseLost, fenced_update, rowcount

log = get_logger(__name__)


def store_result(context: PipelineContext, lease: Lease) -> str:
    """Write result.json and result.md, then the job's final status; return that status."""
    with context.database.session() as session:
        pages = list(session.scalars(select(Page).where(Page.job_id == lease.job_id)))
    result = build_result(lease.job_id, pages)

    stage_started = time.perf_counter()
    encoded = _json_bytes(result)
    context.storage.put_bytes(result_json_key(lease.job_id), encoded, "application/json")
    context.storage.put_bytes(
        result_markdown_key(lease.job_id), result["markdown"].encode(), "text/markdown"
    )
    log.info(
        "stage.finished", stage="store", bytes=len(encoded), duration_ms=elapsed_ms(stage_started)
    )

    status = final_job_status([PageStatus(page.status) for page in pages])
    failed = [page for page in pages if page.status != PageStatus.SUCCEEDED]
    failed.sort(key=lambda page: page.page_index)
    code, message = summarize_failures(failed, len(pages), status)
    finish_job(context, lease, status, code, message)
    return status


def summarize_failures(
    failed: list[Page], page_count: int, status: JobStatus
) -> tuple[str | None, str | None]:
    """Return the job's error code and message for its failed pages (None, None when none)."""
    if not failed:
        return None, None
    numbers = ", ".join(str(page.page_index + 1) for page in failed)
    if status == JobStatus.PARTIAL:
        return "pages_failed", f"{len(failed)} of {page_count} pages failed: page {numbers}."
    codes = {page.error_code for page in failed}
    if len(codes) == 1:
        return codes.pop(), failed[0].error_message
    return "pages_failed", f"All {page_count} pages failed: page {numbers}."


def finish_job(
    context: PipelineContext,
    lease: Lease,
    status: str,
    error_code: str | None,
    error_message: str | None,
) -> None:
    """Record the final status under this attempt's fence; raise LeaseLost if it was taken."""
    with context.database.session() as session:
        fenced = session.execute(
            fenced_update(lease).values(
                status=status,
                error_code=error_code,
                error_message=error_message,
                finished_at=utcnow(),
            )
        )
        if rowcount(fenced) != 1:
            raise LeaseLost(lease.job_id)
        # The webhook outbox rows commit with the status, or not at all.
        record_job_finished(session, lease.job_id, context.settings)


def _json_bytes(document: dict[str, Any]) -> bytes:
    return json.dumps(document, ensure_ascii=False, indent=2).encode()

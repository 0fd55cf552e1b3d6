"""Result documents, and what is stored beside result.json: page JSON, figures, links, retention.

Result documents are built here from the page rows, so the API can serve a running job's
partial result and the worker writes the same shape to result.json.

Each page's JSON is written to `results/{job_id}/pages/{page_index}.json` (0-based, the same
document as one entry of result.json's `pages`, plus the page's figure names) as soon as the
page is recorded, so a client can fetch finished pages while the job runs.

Links (GET /v1/jobs/{id}/result?links=true): on S3 they are presigned GET URLs valid for
OCRQ_PRESIGN_EXPIRES_S. A file:// storage has no URLs of its own, so its links are the API's
routes (result, result.md, pages/{index}, figures/{name}), which need the API key.

Retention: the sweeper deletes every finished job whose finished_at is older than
OCRQ_RESULT_RETENTION_S, its stored objects first, then its rows, so an expired job reads
exactly like a deleted one (404 job_not_found). A finished batch goes too, once its jobs have.
0 turns the sweep off.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, select

from core.db import Database
from core.errors import NotFoundError
from core.logging import get_logger
from core.outbox import delete_deliveries
from core.states import JobStatus, PageStatus
from core.storage import (
    Storage,
    figure_key,
    job_prefixes,
    result_json_key,
    result_markdown_key,
)
from core.tables import Batch, Job, Page, isoformat, utcnow

# Pages of a multi-page job's markdown are joined with DeepSeek-OCR's own page separator, on a
# line of its own, so the joined text still splits back into pages with one str.split().
PAGE_SEPARATOR = "\n\n<--- Page Split --->\n\n"
# Figure names as the engines write them: `{page}_{k}.jpg`. Anything else is rejected before it
# becomes a storage key, so a name can never climb out of the job's folder.
FIGURE_NAME = re.compile(r"[0-9]{1,6}_[0-9]{1,6}\.jpg")
# The retention sweep deletes at most this many jobs per run; the next run takes the rest.
EXPIRE_BATCH = 200

_FINAL_STATUSES = [status.value for status in JobStatus if status.is_final]

log = get_logger(__name__)


def page_to_dict(page: Page) -> dict[str, Any]:
    """Return one page of a result document; failed pages carry error {code, message}."""
    stored = page.result or {}
    error = None
    if page.error_code:
        error = {"code": page.error_code, "message": page.error_message or ""}
    return {
        "index": page.page_index,
        "width": page.width,
        "height": page.height,
        "markdown": page.markdown or "",
        "blocks": stored.get("blocks", []),
        "finish_reason": stored.get("finish_reason"),
        "timings_ms": stored.get("timings_ms", {}),
        "status": page.status,
        "error": error,
    }


def join_page_markdown(pages: Sequence[Page]) -> str:
    """Join page markdowns in page order with PAGE_SEPARATOR.

    A failed page keeps its place as an HTML comment naming its error code, so page k of the
    split text is still page k of the document.
    """
    parts = []
    for page in sorted(pages, key=lambda item: item.page_index):
        if page.status == PageStatus.SUCCEEDED:
            parts.append((page.markdown or "").strip())
        else:
            code = page.error_code or page.status
            parts.append(f"<!-- ocrq: page {page.page_index + 1} not read ({code}) -->")
    return PAGE_SEPARATOR.join(parts)


def build_result(job_id: str, pages: Sequence[Page]) -> dict[str, Any]:
    """Return the result document `{job_id, markdown, pages: [...]}` for these page rows."""
    ordered = sorted(pages, key=lambda item: item.page_index)
    return {
        "job_id": job_id,
        "markdown": join_page_markdown(ordered),
        "pages": [page_to_dict(page) for page in ordered],
    }


def page_json_key(job_id: str, page_index: int) -> str:
    return f"results/{job_id}/pages/{page_index}.json"


def page_document(page: Page) -> dict[str, Any]:
    """Return the stored JSON of one page: result.json's page entry and its figure names."""
    document = page_to_dict(page)
    document["figures"] = list((page.result or {}).get("figures", []))
    return document


def store_page_json(storage: Storage, job_id: str, page: Page) -> None:
    """Write the page's JSON to storage, once the page row is committed."""
    encoded = json.dumps(page_document(page), ensure_ascii=False).encode()
    storage.put_bytes(page_json_key(job_id, page.page_index), encoded, "application/json")


def check_figure_name(job_id: str, name: str) -> str:
    """Return `name` if it is a figure name; raise NotFoundError (404) for anything else."""
    if not FIGURE_NAME.fullmatch(name):
        message = (
            f"Figure {name[:64]!r} of job {job_id!r} was not found; expected a name like 0_0.jpg."
        )
        raise NotFoundError(message, code="figure_not_found")
    return name


def read_figure(storage: Storage, job_id: str, name: str) -> bytes:
    """Return a stored figure's JPEG bytes; raise NotFoundError (404) when there is none."""
    key = figure_key(job_id, check_figure_name(job_id, name))
    try:
        return storage.get_bytes(key)
    except NotFoundError:
        message = f"Figure {name[:64]!r} of job {job_id!r} was not found."
        raise NotFoundError(message, code="figure_not_found") from None


def result_links(
    storage: Storage, job: Job, pages: Sequence[Page], api_base: str, expires_s: int
) -> dict[str, Any]:
    """Return download links for a finished job's result files, pages and figures.

    `api_base` is the URL of the job's route (…/v1/jobs/{id}). Links point there when the
    storage has no presigned URLs. A result file that does not exist (a canceled job has none)
    gets a null URL.
    """
    job_id = job.id
    recorded = sorted(
        (page for page in pages if page.status in (PageStatus.SUCCEEDED, PageStatus.FAILED)),
        key=lambda page: page.page_index,
    )
    figures = [name for page in recorded for name in (page.result or {}).get("figures", [])]

    if storage.presigned_url(result_json_key(job_id), expires_s) is None:
        return {
            "job_id": job_id,
            "expires_at": None,
            "result_json": f"{api_base}/result",
            "result_md": f"{api_base}/result.md",
            "pages": [
                _link(page.page_index, f"{api_base}/pages/{page.page_index}") for page in recorded
            ],
            "figures": [{"name": name, "url": f"{api_base}/figures/{name}"} for name in figures],
        }

    def presign(key: str) -> str | None:
        return storage.presigned_url(key, expires_s) if storage.exists(key) else None

    return {
        "job_id": job_id,
        "expires_at": isoformat(utcnow() + timedelta(seconds=expires_s)),
        "result_json": presign(result_json_key(job_id)),
        "result_md": presign(result_markdown_key(job_id)),
        "pages": [
            _link(
                page.page_index,
                storage.presigned_url(page_json_key(job_id, page.page_index), expires_s),
            )
            for page in recorded
        ],
        "figures": [
            {"name": name, "url": storage.presigned_url(figure_key(job_id, name), expires_s)}
            for name in figures
        ],
    }


def expire_results(
    database: Database, storage: Storage, retention_s: int, now: datetime | None = None
) -> list[str]:
    """Delete finished jobs older than `retention_s` (objects, then rows); return their ids.

    Does nothing when `retention_s` is 0. `now` replaces the clock in tests.
    """
    if retention_s <= 0:
        return []
    cutoff = (now or utcnow()) - timedelta(seconds=retention_s)
    with database.session() as session:
        statement = (
            select(Job.id)
            .where(Job.status.in_(_FINAL_STATUSES))
            .where(Job.finished_at < cutoff)
            .order_by(Job.finished_at)
            .limit(EXPIRE_BATCH)
        )
        job_ids = list(session.scalars(statement))

    for job_id in job_ids:
        # Objects first: a failure here leaves the row, and the next sweep tries again.
        objects = sum(storage.delete_prefix(prefix) for prefix in job_prefixes(job_id))
        with database.session() as session:
            row = session.get(Job, job_id)
            if row is not None:
                session.delete(row)
            delete_deliveries(session, job_ids=[job_id])
        log.info("job.expired", job_id=job_id, objects=objects)

    expire_batches(database, cutoff)
    return job_ids


def expire_batches(database: Database, cutoff: datetime) -> list[str]:
    """Delete batches that finished before `cutoff` once none of their jobs is left.

    A batch's jobs finish before it does, so they expire in the same sweep or an earlier one.
    """
    no_jobs_left = ~exists().where(Job.batch_id == Batch.id)
    with database.session() as session:
        statement = (
            select(Batch.id)
            .where(Batch.finished_at < cutoff)
            .where(no_jobs_left)
            .limit(EXPIRE_BATCH)
        )
        batch_ids = list(session.scalars(statement))
        if batch_ids:
            session.execute(delete(Batch).where(Batch.id.in_(batch_ids)))
            delete_deliveries(session, batch_ids=batch_ids)
    for batch_id in batch_ids:
        log.info("batch.expired", batch_id=batch_id)
    return batch_ids


def _link(page_index: int, url: str | None) -> dict[str, Any]:
    return {"index": page_index, "url": url}

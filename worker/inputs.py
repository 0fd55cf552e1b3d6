"""The fetch stage: put a job's document in a local file, downloading a URL or S3 source first.

An uploaded document is already stored at the job's input_key. A URL or S3 source is
downloaded on the job's first attempt, inspected (a file that is not an accepted document
fails the job with the input error's code), stored at input_key and recorded on the job row.
Later attempts then read the stored copy, so the source is fetched once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from core.db import Database
from core.documents import Limits, inspect_document
from core.inputs import SOURCE_S3, SOURCE_URL, fetch_source
from core.logging import get_logger
from core.settings import Settings
from core.storage import Storage
from core.tables import Job

log = get_logger(__name__)


def download_input(
    settings: Settings,
    database: Database,
    storage: Storage,
    job_id: str,
    input_key: str,
    dest: Path,
) -> None:
    """Write the job's document to `dest`, fetching its URL or S3 source when not yet stored.

    Raises InputError for a source that is refused, missing or not a document, and
    TransientError for a fetch that may succeed later.
    """
    started = time.perf_counter()
    with database.session() as session:
        source: dict[str, Any] | None = session.scalar(select(Job.source).where(Job.id == job_id))

    fetched = bool(source and source.get("type") in (SOURCE_URL, SOURCE_S3))
    if fetched and not storage.exists(input_key):
        assert source is not None
        fetch_source(source, dest, settings)
        info = inspect_document(dest, Limits.from_settings(settings))
        storage.put_file(input_key, dest, content_type=info.media_type)
        with database.session() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    media_type=info.media_type,
                    size_bytes=dest.stat().st_size,
                    pages_total=info.page_count,
                )
            )
    else:
        storage.download_to(input_key, dest)

    log.info(
        "stage.finished",
        stage="fetch",
        source=(source or {}).get("type", "upload"),
        bytes=dest.stat().st_size,
        duration_ms=int((time.perf_counter() - started) * 1000),
    )

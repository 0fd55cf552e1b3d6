"""Run the engine on pages, store their figures, and build the page rows' column values."""

from __future__ import annotations

import io
import time
from datetime import datetime
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from PIL import Image

from core.errors import TransientError
from core.logging import elapsed_ms, get_logger
from core.settings import Settings
from core.states import PageStatus
from core.storage import Storage, figure_key
from core.tables import utcnow
from models.engine import Engine, PageInput, PageResult
from worker.context import PipelineContext
from worker.lease import Lease

FIGURE_JPEG_QUALITY = 90

log = get_logger(__name__)


def read_batch(
    context: PipelineContext, lease: Lease, engine: Engine, batch: list[PageInput]
) -> list[dict[str, Any]]:
    """Run the engine on several pages in one call, and store their figures.

    Returns the page rows' column values in batch order. When the batched call fails, each page
    is read again on its own with read_page, so one bad page fails alone.
    """
    if len(batch) == 1:
        return [read_page(context, lease, engine, batch[0].page_index, batch[0].image)]

    started_at = utcnow()
    batch_started = time.perf_counter()
    try:
        results = engine.run_pages(batch, lease.options)
    except SoftTimeLimitExceeded as exc:
        raise time_limit_error(context.settings) from exc
    except Exception:
        log.warning("batch.failed", pages=len(batch), stage="decode", exc_info=True)
        return [read_page(context, lease, engine, page.page_index, page.image) for page in batch]

    # Every page of the batch took the batch's time, so each row's timings total is that time.
    duration_ms = elapsed_ms(batch_started)
    values = []
    for result in results:
        log.info(
            "page.decoded",
            page=result.page_index,
            pages=len(batch),
            duration_ms=duration_ms,
            output_tokens=result.output_tokens,
            blocks=len(result.blocks),
            figures=len(result.figures),
        )
        store_figures(context.storage, lease.job_id, result)
        values.append(succeeded_page_values(result, 1, started_at, duration_ms))
    return values


def time_limit_error(settings: Settings) -> TransientError:
    """Return the error that ends an attempt which ran past OCRQ_TASK_TIME_LIMIT_S."""
    message = (
        f"The attempt ran past its time limit of {settings.task_time_limit_s} s "
        "(OCRQ_TASK_TIME_LIMIT_S)."
    )
    return TransientError(message, code="time_limit_exceeded")


def read_page(
    context: PipelineContext, lease: Lease, engine: Engine, page_index: int, image: Image.Image
) -> dict[str, Any]:
    """Run the engine on one page (retrying up to OCRQ_PAGE_MAX_ATTEMPTS), store its figures.

    Returns the column values of the page row, for a succeeded or a failed page.
    """
    max_tries = context.settings.page_max_attempts
    started_at = utcnow()
    for tries in range(1, max_tries + 1):
        page_started = time.perf_counter()
        try:
            result = engine.run_pages(
                [PageInput(image=image, page_index=page_index)], lease.options
            )[0]
        except SoftTimeLimitExceeded as exc:
            # The whole attempt is out of time, not this page, so the attempt ends here.
            raise time_limit_error(context.settings) from exc
        except Exception as exc:
            # The engine's own failure on this page (bad output, out of memory): the page
            # fails after its tries, the other pages go on.
            log.warning("page.failed", stage="decode", tries=tries, exc_info=True)
            if tries == max_tries:
                message = f"The engine failed on page {page_index + 1}: {type(exc).__name__}."
                return failed_page_values("engine_error", message, tries, started_at)
            continue

        duration_ms = elapsed_ms(page_started)
        log.info(
            "page.decoded",
            duration_ms=duration_ms,
            output_tokens=result.output_tokens,
            blocks=len(result.blocks),
            figures=len(result.figures),
        )
        store_figures(context.storage, lease.job_id, result)
        return succeeded_page_values(result, tries, started_at, duration_ms)
    raise AssertionError("unreachable: the loop returns on its last try")


def store_figures(storage: Storage, job_id: str, result: PageResult) -> None:
    for figure in result.figures:
        buffer = io.BytesIO()
        figure.image.convert("RGB").save(buffer, format="JPEG", quality=FIGURE_JPEG_QUALITY)
        storage.put_bytes(figure_key(job_id, figure.name), buffer.getvalue(), "image/jpeg")


def succeeded_page_values(
    result: PageResult, tries: int, started_at: datetime, duration_ms: int
) -> dict[str, Any]:
    stored = result.to_dict()
    stored.pop("markdown")
    timings = dict(result.timings_ms)
    timings.setdefault("total", duration_ms)
    stored["timings_ms"] = timings
    return {
        "status": PageStatus.SUCCEEDED,
        "attempts": tries,
        "width": result.width,
        "height": result.height,
        "markdown": result.markdown,
        "result": stored,
        "error_code": None,
        "error_message": None,
        "started_at": started_at,
        "finished_at": utcnow(),
    }


def failed_page_values(
    code: str, message: str, tries: int, started_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "status": PageStatus.FAILED,
        "attempts": tries,
        "markdown": None,
        "result": None,
        "error_code": code,
        "error_message": message,
        "started_at": started_at,
        "finished_at": utcnow(),
    }

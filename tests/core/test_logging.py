"""core.logging: JSON lines with context, library loggers in the same format, no frame locals."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from core.logging import configure_logging, get_logger


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", json_output=True, stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()
    logging.getLogger().handlers.clear()


def read_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_event_carries_fields_and_bound_context(log_stream: io.StringIO) -> None:
    with structlog.contextvars.bound_contextvars(job_id="J1", attempt=2):
        get_logger("test").info("page.decoded", page=3, duration_ms=12)

    [line] = read_lines(log_stream)
    assert line["event"] == "page.decoded"
    assert (line["job_id"], line["attempt"], line["page"]) == ("J1", 2, 3)
    assert line["level"] == "info"
    assert str(line["timestamp"]).endswith("Z")


def test_library_logger_renders_as_json(log_stream: io.StringIO) -> None:
    logging.getLogger("celery.worker").warning("worker %s lost", "w1")

    [line] = read_lines(log_stream)
    assert line["event"] == "worker w1 lost"
    assert line["logger"] == "celery.worker"


def test_level_filters_debug(log_stream: io.StringIO) -> None:
    get_logger("test").debug("stage.finished")

    assert log_stream.getvalue() == ""


def test_exception_omits_frame_locals(log_stream: io.StringIO) -> None:
    document_text = "confidential page text"
    try:
        raise ValueError("bad page")
    except ValueError:
        get_logger("test").exception("attempt.failed")

    assert document_text not in log_stream.getvalue()
    [line] = read_lines(log_stream)
    assert line["exception"][0]["exc_type"] == "ValueError"  # type: ignore[index]

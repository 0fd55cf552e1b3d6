"""Structured logging: one structlog configuration per process, shared by library loggers.

Events are fixed dotted names (job.created, page.decoded, job.finished) with values as fields.
Output is JSON lines, or the console renderer when the stream is a terminal. Standard-library
loggers (Celery, SQLAlchemy, uvicorn, botocore) go through the same processors and renderer.
Never pass document text, image bytes, presigned URLs or secrets as fields.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO

import structlog

# Libraries whose INFO lines are noise next to ours; they still log warnings and errors.
_QUIET_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "alembic", "PIL", "httpx")


def configure_logging(
    level: str = "INFO", *, json_output: bool | None = None, stream: TextIO | None = None
) -> None:
    """Configure structlog and the standard-library root logger; calling it again reconfigures.

    json_output None picks the console renderer when `stream` is a terminal, JSON otherwise.
    """
    stream = stream if stream is not None else sys.stderr
    if json_output is None:
        json_output = not stream.isatty()
    numeric_level = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)

    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if json_output:
        renderer = structlog.processors.JSONRenderer()
        # Frame locals stay out of logs: they may hold document text or credentials.
        shared_processors.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric_level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger named after the module that logs."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def elapsed_ms(started: float) -> int:
    """Return the whole milliseconds since `started`, a time.perf_counter() value."""
    return int((time.perf_counter() - started) * 1000)

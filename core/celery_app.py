"""The Celery app object, its configuration, and enqueueing jobs by task name.

The API and `ocrq run` enqueue through enqueue_job(); only worker/tasks.py registers the task
functions, so core never imports the worker. Without a broker (embedded mode) enqueue_job()
hands the job to an in-process runner that the caller registered with set_embedded_runner().
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from celery import Celery

from core.errors import ConfigError, TransientError
from core.settings import Settings, get_settings

TASK_PROCESS_JOB = "ocrq.process_job"
TASK_PROCESS_PAGE = "ocrq.process_page"
QUEUE_OCR = "ocr"
QUEUE_NAMES = (QUEUE_OCR,)
# Job priority to Redis message priority. Redis transports serve 0 first, the opposite of AMQP,
# and kombu keeps one list per step of its default priority steps (0, 3, 6, 9).
MESSAGE_PRIORITIES = {"high": 0, "normal": 3, "low": 6}
# Page messages only wake a worker, which then claims the best page in the database
# (core/scheduling.py). They wait in the last list, so a new job's message, which counts its
# pages, is always read before a backlog of page messages.
PAGE_MESSAGE_PRIORITY = 9

# Redis re-delivers an unacknowledged message after visibility_timeout, set to this many task
# time limits. A factor above 2 keeps a long but healthy attempt on its first worker.
VISIBILITY_TIMEOUT_FACTOR = 3
# Seconds a prefork child may take to report ready; model loading happens in that window.
WORKER_PROC_ALIVE_TIMEOUT_S = 600.0
SOFT_TIME_LIMIT_MARGIN_S = 60
# Publishing gives up after about 2 s, so an API request fails fast when the broker is down.
_SEND_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}

EmbeddedRunner = Callable[[str], None]

# Process-wide state, kept to this one place: Celery apps by broker URL, and the embedded runner.
_apps: dict[str, Celery] = {}
_apps_lock = threading.Lock()
_embedded_runner: EmbeddedRunner | None = None


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery configuration for `settings`."""
    hard_limit_s = settings.task_time_limit_s
    return {
        "broker_url": settings.broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 4,
        "broker_transport_options": {
            "visibility_timeout": VISIBILITY_TIMEOUT_FACTOR * hard_limit_s,
            "health_check_interval": 30,
            "socket_keepalive": True,
            "queue_order_strategy": "priority",
        },
        "task_default_queue": QUEUE_OCR,
        "task_routes": {
            TASK_PROCESS_JOB: {"queue": QUEUE_OCR},
            TASK_PROCESS_PAGE: {"queue": QUEUE_OCR},
        },
        # A message is acknowledged after the task returns, and re-queued when the worker
        # process dies mid-task; the pipeline's lease makes the second run safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_time_limit": hard_limit_s,
        "task_soft_time_limit": max(1, hard_limit_s - SOFT_TIME_LIMIT_MARGIN_S),
        # Job state lives in the database; nothing reads Celery results.
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "worker_proc_alive_timeout": WORKER_PROC_ALIVE_TIMEOUT_S,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }


def create_celery_app(settings: Settings) -> Celery:
    """Build a Celery app for the broker in `settings`; raise ConfigError when none is set."""
    if not settings.broker_url:
        message = "OCRQ_BROKER_URL is not set; a Celery app needs a broker (e.g. redis://...)"
        raise ConfigError(message)
    app = Celery("ocrq")
    app.conf.update(celery_config(settings))
    return app


def get_celery_app(settings: Settings | None = None) -> Celery:
    """Return the process's Celery app for the broker in `settings` (default get_settings())."""
    settings = settings or get_settings()
    key = settings.broker_url or ""
    with _apps_lock:
        app = _apps.get(key)
        if app is None:
            app = create_celery_app(settings)
            _apps[key] = app
        return app


def set_embedded_runner(runner: EmbeddedRunner | None) -> None:
    """Register the function that processes a job in this process when no broker is set."""
    global _embedded_runner
    _embedded_runner = runner


def enqueue_job(job_id: str, settings: Settings, priority: str = "normal") -> None:
    """Send task ocrq.process_job for `job_id`, or run it in-process in embedded mode.

    `priority` is high, normal or low. Raises TransientError when the broker rejects the
    message or no embedded runner is registered, and the job then stays queued with
    enqueued_at unset for the sweeper.
    """
    if settings.embedded:
        runner = _embedded_runner
        if runner is None:
            message = "no broker is configured (OCRQ_BROKER_URL) and no in-process runner is set"
            raise TransientError(message)
        runner(job_id)
        return

    app = get_celery_app(settings)
    try:
        app.send_task(
            TASK_PROCESS_JOB,
            args=[job_id],
            queue=QUEUE_OCR,
            priority=MESSAGE_PRIORITIES.get(priority, MESSAGE_PRIORITIES["normal"]),
            retry=True,
            retry_policy=_SEND_RETRY,
        )
    except Exception as exc:  # kombu raises many unrelated types for one unreachable broker
        message = f"the broker did not accept job {job_id}: {type(exc).__name__}"
        raise TransientError(message) from exc


def enqueue_pages(job_id: str, count: int, settings: Settings, countdown_s: float = 0) -> None:
    """Send `count` ocrq.process_page messages that each run one claimable page.

    Any worker that reads one claims the best page in the database, which may belong to
    another job; `job_id` only names the job in logs. Embedded mode sends nothing, because
    `ocrq run` works through its job's pages in-process. Raises TransientError as enqueue_job.
    """
    if settings.embedded or count <= 0:
        return
    app = get_celery_app(settings)
    try:
        for _ in range(count):
            app.send_task(
                TASK_PROCESS_PAGE,
                args=[job_id],
                queue=QUEUE_OCR,
                priority=PAGE_MESSAGE_PRIORITY,
                countdown=countdown_s or None,
                retry=True,
                retry_policy=_SEND_RETRY,
            )
    except Exception as exc:  # kombu raises many unrelated types for one unreachable broker
        message = f"the broker did not accept the pages of job {job_id}: {type(exc).__name__}"
        raise TransientError(message) from exc

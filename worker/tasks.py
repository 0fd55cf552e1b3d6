"""Celery task registration: ocrq.process_job, bound to core's app by name.

The task is thin: it runs one attempt of the pipeline and, when the attempt requests a retry,
schedules the next delivery. Duplicate deliveries are safe because the pipeline leases the job.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready

from core.celery_app import TASK_PROCESS_JOB
from core.settings import get_settings
from worker import runner
from worker.pipeline import process_job
from worker.webhooks import register_webhook_tasks, worker_delivery_context


def register_tasks(app: Celery, *, warm_up: bool = True) -> None:
    """Register ocrq.process_job and ocrq.deliver_webhooks on `app`, the engine warm-up in each
    prefork child, and the sweeper thread in the main worker process.

    Pass warm_up=False for a worker that only delivers webhooks, so it never loads an engine.
    """

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_PROCESS_JOB,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        # Registered on this app only; the app is built from settings, so tests build several.
        shared=False,
    )
    def process_job_task(self: Task[Any, Any], job_id: str) -> str:
        outcome = process_job(job_id, runner.worker_context())
        if outcome.retry:
            raise self.retry(countdown=outcome.retry_in_s, max_retries=None)
        return outcome.status

    register_webhook_tasks(app, worker_delivery_context)

    if warm_up:
        worker_process_init.connect(_warm_up_child, weak=False, dispatch_uid="ocrq.warm_up")
    worker_ready.connect(_start_sweeper, weak=False, dispatch_uid="ocrq.sweeper")


def _warm_up_child(**_kwargs: Any) -> None:
    runner.warm_up()


def _start_sweeper(**_kwargs: Any) -> None:
    # Runs in the main worker process, after the pool has started; it never loads an engine.
    runner.start_sweeper(get_settings())

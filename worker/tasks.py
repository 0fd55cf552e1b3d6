"""Celery task registration: ocrq.process_job and ocrq.process_page, bound to core's app by name.

The tasks are thin. ocrq.process_job runs one attempt of the pipeline, which counts the pages
and sends one ocrq.process_page message per page. When the attempt requests a retry, the task
schedules the next delivery. ocrq.process_page claims and runs the best page in the database.
Duplicate deliveries are safe because the pipeline leases the job and each page.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_init, worker_ready

from core.celery_app import TASK_PROCESS_JOB, TASK_PROCESS_PAGE, enqueue_pages
from core.errors import TransientError
from core.settings import get_settings
from worker import runner
from worker.pages import process_next
from worker.pipeline import process_job
from worker.webhooks import register_webhook_tasks, worker_delivery_context

# A page message that finds only pages held back by their tenant's limit waits this long, then
# goes to the back of the queue, so the worker does not spin on the database.
FAIR_SHARE_WAIT_S = 0.5
# A page message whose pages failed outside the engine (storage, database) runs again after this.
PAGE_RETRY_DELAY_S = 5


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
        outcome = process_job(job_id, runner.worker_context(), fan_out=True)
        if outcome.retry:
            raise self.retry(countdown=outcome.retry_in_s, max_retries=None)
        return outcome.status

    @app.task(  # type: ignore[untyped-decorator]
        name=TASK_PROCESS_PAGE,
        bind=True,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        shared=False,
    )
    def process_page_task(self: Task[Any, Any], job_id: str) -> str:
        """Run the best claimable page, of any job; return the job's final status, ran or idle.

        `job_id` names the job whose page sent this message, for logs only.
        """
        context = runner.worker_context()
        try:
            outcome = process_next(context, runner.worker_inputs())
        except Exception as exc:
            # The claimed pages are pending again, and the claim counter in pages.attempts
            # fails a page that keeps failing this way after OCRQ_MAX_ATTEMPTS claims.
            raise self.retry(exc=exc, countdown=PAGE_RETRY_DELAY_S, max_retries=None) from exc
        if outcome.ran:
            return outcome.job_status or "ran"
        if outcome.waiting:
            time.sleep(FAIR_SHARE_WAIT_S)
            try:
                enqueue_pages(job_id, 1, context.settings)
            except TransientError as exc:
                # This message must not end without a successor, or a waiting page loses its
                # wake-up until the sweeper's next round.
                raise self.retry(exc=exc, countdown=PAGE_RETRY_DELAY_S, max_retries=None) from exc
            return "deferred"
        return "idle"

    register_webhook_tasks(app, worker_delivery_context)

    if warm_up:
        worker_process_init.connect(_warm_up_child, weak=False, dispatch_uid="ocrq.warm_up")
    worker_ready.connect(_start_sweeper, weak=False, dispatch_uid="ocrq.sweeper")


def _warm_up_child(**_kwargs: Any) -> None:
    runner.warm_up()


def _start_sweeper(**_kwargs: Any) -> None:
    # Runs in the main worker process, after the pool has started; it never loads an engine.
    runner.start_sweeper(get_settings())

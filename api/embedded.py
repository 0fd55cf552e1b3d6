"""Embedded mode: with no broker (OCRQ_BROKER_URL unset) the API runs jobs in a background thread.

The queue lives in memory, so jobs still queued or running when the process stopped are handed
to the thread again at the next start. The function that runs a job comes from the caller
(`ocrq api` passes the worker pipeline), which keeps api/ free of worker and model imports.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from sqlalchemy import select

from core.db import Database
from core.logging import get_logger
from core.states import JobStatus
from core.tables import Job

JobRunner = Callable[[str], object]

# Seconds stop() waits for the job in progress before leaving the daemon thread behind.
STOP_TIMEOUT_S = 5.0

log = get_logger(__name__)


class EmbeddedWorker:
    """One daemon thread that runs submitted job ids in order, one at a time."""

    def __init__(self, run_job: JobRunner) -> None:
        self._run_job = run_job
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="ocrq-embedded", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("embedded_worker.started")

    def submit(self, job_id: str) -> None:
        """Queue a job; this is the runner registered with core.celery_app.set_embedded_runner."""
        self._queue.put(job_id)

    def stop(self) -> None:
        """Ask the thread to finish after the job in progress, and wait a little for it."""
        self._queue.put(None)
        self._thread.join(timeout=STOP_TIMEOUT_S)

    def resume_unfinished(self, database: Database) -> list[str]:
        """Queue the jobs a previous process left queued or running; return their ids.

        NOTE: the pipeline's lease skips a running job until its heartbeat is older than
        OCRQ_TASK_TIME_LIMIT_S, so a job that was running at a crash waits that long.
        """
        unfinished = (JobStatus.QUEUED, JobStatus.RUNNING)
        with database.session() as session:
            statement = select(Job.id).where(Job.status.in_(unfinished)).order_by(Job.created_at)
            job_ids = list(session.scalars(statement))
        for job_id in job_ids:
            self.submit(job_id)
        if job_ids:
            log.info("embedded_worker.resumed", jobs=len(job_ids))
        return job_ids

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run_job(job_id)
            except Exception:
                # The pipeline records failures on the job row; this is a bug or a lost database.
                log.exception("embedded_worker.job_failed", job_id=job_id)

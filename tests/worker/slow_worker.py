"""A Celery worker whose engine sleeps on every page, for scheduling tests.

Run as `python -m tests.worker.slow_worker`, configured by the OCRQ_ variables and by
OCRQ_TEST_PAGE_DELAY_S (seconds per page) and OCRQ_TEST_CONCURRENCY (threads).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

from core.celery_app import QUEUE_OCR, get_celery_app
from core.logging import configure_logging
from core.settings import get_settings
from models.engine import PageInput, PageOptions, PageResult
from tests.worker.fakes import FakeEngine
from worker import runner
from worker.context import PipelineContext
from worker.tasks import register_tasks


@dataclass
class SlowEngine(FakeEngine):
    """FakeEngine that sleeps `delay_s` per page before returning its results."""

    delay_s: float = 0.5

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        time.sleep(self.delay_s * len(pages))
        return super().run_pages(pages, options)


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    engine = SlowEngine(delay_s=float(os.environ.get("OCRQ_TEST_PAGE_DELAY_S", "0.5")))
    built = runner.build_context(settings)
    # The worker's process context, with the slow engine in place of the configured one.
    runner._process_context = PipelineContext(
        settings, built.database, built.storage, lambda _name: engine
    )
    app = get_celery_app(settings)
    register_tasks(app, warm_up=False)
    concurrency = os.environ.get("OCRQ_TEST_CONCURRENCY", "1")
    app.worker_main(
        [
            "worker",
            f"--queues={QUEUE_OCR}",
            "--pool=threads",
            f"--concurrency={concurrency}",
            "--optimization=fair",
            "--loglevel=INFO",
        ]
    )


if __name__ == "__main__":
    main()

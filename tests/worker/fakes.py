"""A scripted engine and a pipeline harness for tests of the job pipeline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.celery_app import set_embedded_runner
from core.db import Database, upgrade_database
from core.jobs import JobService
from core.settings import Settings
from core.states import JobStatus
from core.storage import Storage, input_key, open_storage
from core.tables import Job, new_id
from models.engine import Block, Engine, Figure, PageInput, PageOptions, PageResult
from worker.context import PipelineContext


@dataclass
class FakeEngine:
    """Returns "page N" markdown per page; fails on the pages in `failing_pages`."""

    name: str = "fake"
    failing_pages: set[int] = field(default_factory=set)
    figure_pages: set[int] = field(default_factory=set)
    calls: list[int] = field(default_factory=list)

    def run_pages(self, pages: Sequence[PageInput], options: PageOptions) -> list[PageResult]:
        results = []
        for page in pages:
            self.calls.append(page.page_index)
            if page.page_index in self.failing_pages:
                raise RuntimeError(f"scripted failure on page {page.page_index}")
            width, height = page.image.size
            figures = []
            if page.page_index in self.figure_pages:
                crop = page.image.crop((0, 0, width // 2, height // 2))
                figures.append(
                    Figure(f"{page.page_index}_0.jpg", (0, 0, width // 2, height // 2), crop)
                )
            results.append(
                PageResult(
                    page_index=page.page_index,
                    width=width,
                    height=height,
                    markdown=f"page {page.page_index + 1}",
                    blocks=[Block("text", (0, 0, width, height), f"page {page.page_index + 1}")],
                    raw_text=f"page {page.page_index + 1}",
                    finish_reason="eos",
                    output_tokens=3,
                    timings_ms={"decode": 1},
                    figures=figures,
                )
            )
        return results


@dataclass
class Harness:
    """A job service and pipeline context on one database and storage."""

    settings: Settings
    service: JobService
    context: PipelineContext
    enqueued: list[str]

    @property
    def database(self) -> Database:
        return self.service.database

    @property
    def storage(self) -> Storage:
        return self.service.storage

    def insert_job(self, path: Path, **overrides: object) -> str:
        """Store a document and commit a queued job for it without inspecting it."""
        job_id = new_id()
        self.storage.put_file(input_key(job_id), path)
        values: dict[str, object] = {
            "id": job_id,
            "status": JobStatus.QUEUED,
            "engine": "fake",
            "mode": "gundam",
            "task": "markdown",
            "media_type": "application/octet-stream",
            "input_key": input_key(job_id),
            "size_bytes": path.stat().st_size,
            "pages_done": 0,
            "attempt": 0,
        }
        values.update(overrides)
        with self.database.session() as session:
            session.add(Job(**values))
        return job_id


def make_harness(settings: Settings, engine: Engine, storage: Storage | None = None) -> Harness:
    """Migrate the settings' database and build a service whose enqueue only records job ids."""
    upgrade_database(settings.resolved_database_url)
    database = Database(settings.resolved_database_url)
    storage = storage or open_storage(settings)
    enqueued: list[str] = []
    set_embedded_runner(enqueued.append)
    service = JobService(settings.model_copy(update={"broker_url": None}), database, storage)
    engines: Callable[[str], Engine] = lambda _name: engine  # noqa: E731
    context = PipelineContext(settings, database, storage, engines)
    return Harness(settings, service, context, enqueued)


def solid_page(size_px: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size_px, "white")

"""Engine loading and the per-process pipeline context.

Each worker process loads an engine once and reuses it for every page. Under the prefork pool
the engine is loaded in the child (Celery's worker_process_init), never in the parent, so
CUDA is first touched after the fork. Under the solo and threads pools, and in `ocrq run`, it
is loaded on the first job.
"""

from __future__ import annotations

import threading
import time

from core.db import Database
from core.errors import ConfigError
from core.jobs import JobService
from core.logging import get_logger
from core.outbox import wake_if_due
from core.settings import Settings, get_settings
from core.storage import open_storage
from models.engine import Engine
from models.registry import EngineLoadError, load_engine, resolve_engine_name
from worker.context import PipelineContext, ProgressCallback
from worker.pages import InputCache
from worker.pipeline import AttemptOutcome, process_job

SWEEP_INTERVAL_S = 60.0
# load_engine arguments whose setting has another name.
_SETTING_NAMES = {"dtype": "model_dtype"}

log = get_logger(__name__)


class EngineCache:
    """Loaded engines by concrete name; each engine is loaded at most once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Engine:
        """Return the engine for `name` ("auto" resolves as in models.registry), loading it once."""
        try:
            concrete = resolve_engine_name(name, self.settings.model_path)
        except ValueError as exc:
            raise ConfigError(str(exc), code="invalid_engine") from exc

        with self._lock:
            engine = self._engines.get(concrete)
            if engine is not None:
                return engine

            started = time.perf_counter()
            engine = load_configured_engine(concrete, self.settings)
            self._engines[concrete] = engine
        log.info(
            "engine.loaded",
            engine=concrete,
            device=self.settings.device,
            duration_ms=int((time.perf_counter() - started) * 1000),
        )
        return engine


def load_configured_engine(name: str, settings: Settings) -> Engine:
    """Load engine `name` with the OCRQ_ engine settings; a bad one raises ConfigError naming it."""
    try:
        return load_engine(
            name,
            model_path=settings.model_path,
            device=settings.device,
            dtype=settings.model_dtype,
            max_new_tokens=settings.max_new_tokens,
            max_tiles=settings.max_tiles,
            max_batch_pages=settings.max_batch_pages,
        )
    except EngineLoadError as exc:
        variable = "OCRQ_" + _SETTING_NAMES.get(exc.argument, exc.argument).upper()
        message = f"invalid {variable}: {exc}"
        raise ConfigError(message) from exc
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def build_context(settings: Settings) -> PipelineContext:
    """Open the database, storage and engine cache named by `settings`."""
    return PipelineContext(
        settings=settings,
        database=Database(settings.resolved_database_url),
        storage=open_storage(settings),
        engines=EngineCache(settings),
    )


def run_job_inline(
    job_id: str,
    context: PipelineContext,
    *,
    password: str | None = None,
    on_page: ProgressCallback | None = None,
) -> AttemptOutcome:
    """Run attempts of the job in this process until it finishes or its attempts run out.

    Embedded mode has no broker to schedule a retry later, so a failed attempt is retried at
    once. The attempt counter still stops the loop at OCRQ_MAX_ATTEMPTS.
    """
    while True:
        outcome = process_job(job_id, context, password=password, on_page=on_page)
        if not outcome.retry:
            return outcome


# The worker process's own context and input cache, built after the fork; the one piece of
# global state here.
_process_context: PipelineContext | None = None
_process_inputs: InputCache | None = None
_process_lock = threading.Lock()


def worker_context() -> PipelineContext:
    """Return this process's pipeline context, building it from get_settings() on first use."""
    global _process_context
    with _process_lock:
        if _process_context is None:
            _process_context = build_context(get_settings())
        return _process_context


def worker_inputs() -> InputCache:
    """Return this process's cache of downloaded job inputs, built on first use."""
    global _process_inputs
    context = worker_context()
    with _process_lock:
        if _process_inputs is None:
            _process_inputs = InputCache(context.storage)
        return _process_inputs


def warm_up() -> None:
    """Load the configured engine now (in a fresh worker process) instead of on the first job."""
    context = worker_context()
    try:
        context.engines(context.settings.engine)
    except ConfigError as exc:
        # A bad setting: its message names the variable, and a traceback would add nothing.
        # The first job loads the engine again and records the failure on that job.
        log.error("engine.load_failed", engine=context.settings.engine, error=exc.message)
    except Exception:
        log.exception("engine.load_failed", engine=context.settings.engine)


def start_sweeper(settings: Settings, interval_s: float | None = None) -> threading.Event:
    """Run JobService.sweep() and wake_if_due() at once, then every `interval_s`, in a thread.

    `interval_s` defaults to SWEEP_INTERVAL_S, or OCRQ_PAGE_WAKE_AFTER_S when that is shorter,
    so a page whose wake message was lost waits at most about twice that setting. The first
    round at start-up wakes the pages that a restarted worker's lost messages left behind.
    Set the returned event to stop it.

    Every worker runs one; two sweepers sending the same job is harmless because the
    pipeline's lease drops the duplicate delivery.
    """
    stop = threading.Event()
    service = JobService.open(settings)

    period_s = SWEEP_INTERVAL_S if interval_s is None else interval_s
    if interval_s is None and settings.page_wake_after_s > 0:
        period_s = min(period_s, float(settings.page_wake_after_s))

    def loop() -> None:
        delay_s = 0.0
        while not stop.wait(delay_s):
            delay_s = period_s
            try:
                service.sweep()
                wake_if_due(settings, service.database)
            except Exception:
                # A database or broker outage; the next round tries again.
                log.exception("sweep.failed")

    threading.Thread(target=loop, name="ocrq-sweeper", daemon=True).start()
    return stop

"""`ocrq api`, `ocrq worker`, `ocrq migrate`."""

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port to listen on.")
def api(host: str, port: int) -> None:
    """Serve the HTTP API with uvicorn.

    Without OCRQ_BROKER_URL (embedded mode) jobs run in a background thread of this process;
    with it, jobs go to the broker for `ocrq worker` processes.
    """
    import uvicorn

    from api.app import create_app
    from core.jobs import JobService
    from core.logging import configure_logging
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    job_service = JobService.open(settings)
    app = create_app(settings, job_service=job_service)

    embedded = None
    if settings.embedded:
        from api.embedded import EmbeddedWorker
        from core.celery_app import set_embedded_runner
        from core.db import upgrade_database
        from core.outbox import set_embedded_deliverer
        from worker.runner import build_context, run_job_inline
        from worker.webhooks import DeliveryContext, deliver_due

        # The embedded database is this process's own, so it is brought up to date here.
        upgrade_database(settings.resolved_database_url)
        context = build_context(settings)
        embedded = EmbeddedWorker(lambda job_id: run_job_inline(job_id, context))
        set_embedded_runner(embedded.submit)
        # TODO: embedded mode has no sweeper, so a webhook retry waits for the next event's
        # delivery run or the next start of the API.
        set_embedded_deliverer(lambda: deliver_due(DeliveryContext(settings, context.database)))
        embedded.start()
        embedded.resume_unfinished(job_service.database)

    try:
        uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
    finally:
        if embedded is not None:
            set_embedded_runner(None)
            set_embedded_deliverer(None)
            embedded.stop()


@click.command()
@click.option(
    "--queues",
    "-Q",
    default="ocr,ocrq.webhooks",
    show_default=True,
    help="Comma-separated queues to consume; ocrq.webhooks carries webhook deliveries.",
)
@click.option(
    "--pool",
    type=click.Choice(["prefork", "solo", "threads"]),
    default="prefork",
    show_default=True,
    help="Celery pool; prefork loads the engine in each child, after the fork.",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes or threads; use 1 per GPU.",
)
def worker(queues: str, pool: str, concurrency: int) -> None:
    """Start a Celery worker that processes OCR jobs from OCRQ_BROKER_URL."""
    from core.celery_app import get_celery_app
    from core.logging import configure_logging, get_logger
    from core.outbox import QUEUE_WEBHOOKS
    from core.settings import get_settings
    from worker.tasks import register_tasks

    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.broker_url:
        message = "ocrq worker needs a broker: set OCRQ_BROKER_URL (e.g. redis://127.0.0.1:6379/0)"
        raise click.UsageError(message)

    app = get_celery_app(settings)
    # A worker consuming only ocrq.webhooks sends HTTP requests and needs no OCR engine.
    register_tasks(app, warm_up=set(queues.split(",")) != {QUEUE_WEBHOOKS})
    get_logger("cli.service").info(
        "worker.starting",
        queues=queues,
        pool=pool,
        concurrency=concurrency,
        transport_options=app.conf.broker_transport_options,
        task_time_limit_s=app.conf.task_time_limit,
    )
    app.worker_main(
        [
            "worker",
            f"--queues={queues}",
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            "--optimization=fair",
            f"--loglevel={settings.log_level.upper()}",
        ]
    )


@click.command()
@click.option("--revision", default="head", show_default=True, help="Migrate up to this revision.")
def migrate(revision: str) -> None:
    """Apply database migrations to OCRQ_DATABASE_URL (default: SQLite in OCRQ_DATA_DIR)."""
    from core.db import Database, upgrade_database
    from core.logging import configure_logging, get_logger
    from core.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    url = settings.resolved_database_url
    upgrade_database(url, revision)
    get_logger("cli.service").info(
        "database.migrated", database=Database(url).safe_url, revision=revision
    )

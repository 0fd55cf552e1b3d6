"""The FastAPI application: create_app(settings) wires routes, error handlers and middleware."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.errors import install_error_handlers
from api.metrics import RequestMetrics
from api.middleware import RequestContextMiddleware
from api.openapi import install_openapi
from api.routes import batches, health, jobs, results, webhooks
from api.schemas import ErrorBody
from core.jobs import JobService
from core.settings import Settings, get_settings


def create_app(
    settings: Settings | None = None, *, job_service: JobService | None = None
) -> FastAPI:
    """Build the app on `settings` (default: the environment's); nothing is contacted until used.

    `job_service` replaces the one built from the settings, for tests that share its database
    and storage with the code under test.
    """
    settings = settings or get_settings()
    job_service = job_service or JobService.open(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        job_service.database.dispose()

    app = FastAPI(
        title="ocrq",
        version="0.1.0",
        summary="Asynchronous OCR jobs built around DeepSeek-OCR.",
        debug=False,
        lifespan=lifespan,
        responses={
            422: {"model": ErrorBody, "description": "invalid request or document"},
            500: {"model": ErrorBody, "description": "internal error"},
        },
    )
    app.state.job_service = job_service
    app.state.request_metrics = RequestMetrics()

    install_error_handlers(app, debug=settings.debug)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.request_metrics)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(webhooks.router)
    app.include_router(batches.router)
    app.include_router(results.router)
    install_openapi(app)
    return app

"""Liveness, readiness and metrics: GET /healthz, GET /readyz, GET /metrics."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from api import metrics
from api.deps import JobServiceDep
from api.schemas import HealthStatus
from core.errors import OcrError
from core.logging import get_logger
from core.tables import Job

# How long /readyz waits for the broker before calling it unreachable.
BROKER_PING_TIMEOUT_S = 2.0
# How long /readyz waits for each dependency check (they run at once) before calling it failed.
READY_CHECK_TIMEOUT_S = 3.0
# Seconds a client (or load balancer) should wait before asking /readyz again after a 503.
READY_RETRY_AFTER_S = 5

log = get_logger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthStatus)
def healthz() -> HealthStatus:
    """Report that the process is up; it checks no dependency."""
    return HealthStatus(status="ok")


@router.get(
    "/readyz",
    response_model=HealthStatus,
    responses={503: {"model": HealthStatus, "description": "a dependency is unreachable"}},
)
def readyz(service: JobServiceDep) -> JSONResponse:
    """Check that the database, the broker and the storage are reachable; 503 names what failed."""
    checks = _run_checks(
        {
            "database": service.database.ping,
            "broker": lambda: ping_broker(service.settings.broker_url),
            "storage": service.storage.ping,
        }
    )
    failed = [name for name, state in checks.items() if state != "ok"]
    if not failed:
        return JSONResponse(HealthStatus(status="ok", checks=checks).model_dump())

    log.warning("readiness.failed", failed=failed)
    body = HealthStatus(status="unavailable", checks=checks).model_dump()
    body["detail"] = {
        "code": "not_ready",
        "message": f"unreachable: {', '.join(failed)}; see checks for each failure",
    }
    return JSONResponse(body, status_code=503, headers={"Retry-After": str(READY_RETRY_AFTER_S)})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics_text(service: JobServiceDep, request: Request) -> PlainTextResponse:
    """Return Prometheus metrics: jobs by status and HTTP requests served by this process."""
    job_counts: dict[str, int] | None
    try:
        with service.database.session() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        job_counts = {status: count for status, count in rows}
    except SQLAlchemyError as exc:
        log.warning("metrics.jobs_unavailable", error=type(exc).__name__)
        job_counts = None

    text = metrics.render(job_counts, request.app.state.request_metrics)
    return PlainTextResponse(text, media_type=metrics.CONTENT_TYPE)


def ping_broker(broker_url: str | None) -> None:
    """Send PING to the Redis broker; raise OcrError when it fails. Embedded mode always passes."""
    if not broker_url:
        return
    import redis

    client = redis.Redis.from_url(
        broker_url,
        socket_connect_timeout=BROKER_PING_TIMEOUT_S,
        socket_timeout=BROKER_PING_TIMEOUT_S,
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        message = f"PING to the broker failed: {type(exc).__name__}"
        raise OcrError(message, code="broker_unreachable") from exc
    finally:
        client.close()


def _run_checks(probes: dict[str, Callable[[], None]]) -> dict[str, str]:
    """Run the probes at once; one with no result after READY_CHECK_TIMEOUT_S has failed.

    A probe that hangs keeps its thread until its own client times out, but /readyz still responds.
    """
    executor = ThreadPoolExecutor(max_workers=len(probes), thread_name_prefix="readyz")
    futures = {name: executor.submit(_check, probe) for name, probe in probes.items()}
    done, _ = wait(futures.values(), timeout=READY_CHECK_TIMEOUT_S)
    executor.shutdown(wait=False, cancel_futures=True)
    timed_out = f"failed: no answer within {READY_CHECK_TIMEOUT_S:g} s"
    return {
        name: future.result() if future in done else timed_out for name, future in futures.items()
    }


def _check(probe: Callable[[], None]) -> str:
    """Run one readiness probe and return "ok" or a short description of its failure."""
    try:
        probe()
    except OcrError as exc:
        return f"failed: {exc.message}"
    except Exception as exc:  # noqa: BLE001 (any failure of a probe means not ready)
        return f"failed: {type(exc).__name__}"
    return "ok"

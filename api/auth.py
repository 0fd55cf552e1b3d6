"""Authentication of /v1 requests: `Authorization: Bearer <API key>` resolves to a tenant.

Routes take `caller: CallerDep` and pass `caller.tenant_id` to the service, which limits every
read and write to that tenant. Routers under /v1 also declare AUTH_DEPENDENCIES, so a route that
does not need the caller is still authenticated. With OCRQ_AUTH_REQUIRED=false (local
development only) no key is needed and the caller has no tenant.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.params import Depends as DependsParam
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_job_service
from api.errors import ApiError
from api.schemas import ErrorBody
from core.apikeys import parse_bearer
from core.logging import get_logger
from core.tenants import authenticate

# RFC 6750 challenges: the bare one for a missing key, invalid_token for a rejected one.
_CHALLENGE = 'Bearer realm="ocrq"'
_INVALID_TOKEN_CHALLENGE = 'Bearer realm="ocrq", error="invalid_token"'

log = get_logger(__name__)

# Declares the bearer scheme in the OpenAPI document; the header is parsed by current_tenant.
_bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `ocrq keys create`, sent as `Authorization: Bearer ocrq_...`.",
)


@dataclass(frozen=True)
class Caller:
    """The authenticated caller; tenant_id is None only when OCRQ_AUTH_REQUIRED is false."""

    tenant_id: str | None


async def current_tenant(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> AsyncIterator[Caller]:
    """Authenticate the request's API key; raise 401 when it is missing, invalid or revoked.

    The tenant id is bound into the request's log context. The key never is.
    """
    service = get_job_service(request)
    if not service.settings.auth_required:
        yield Caller(None)
        return

    token = parse_bearer(request.headers.get("authorization"))
    if token is None:
        message = (
            "Missing API key; send the header `Authorization: Bearer <key>` with a key from "
            "`ocrq keys create`."
        )
        raise ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": _CHALLENGE})

    tenant_id = await run_in_threadpool(authenticate, service.database, token)
    if tenant_id is None:
        log.info("request.unauthorized", reason="invalid_or_revoked_key")
        message = "Invalid or revoked API key; create a new one with `ocrq keys create`."
        headers = {"WWW-Authenticate": _INVALID_TOKEN_CHALLENGE}
        raise ApiError(401, "unauthorized", message, headers=headers)

    structlog.contextvars.bind_contextvars(tenant_id=tenant_id)
    try:
        yield Caller(tenant_id)
    finally:
        structlog.contextvars.unbind_contextvars("tenant_id")


CallerDep = Annotated[Caller, Depends(current_tenant)]

# For APIRouter(dependencies=...): every route of the router is authenticated. FastAPI runs the
# dependency once per request even when a route also takes CallerDep.
AUTH_DEPENDENCIES: list[DependsParam] = [Depends(current_tenant)]

# For APIRouter(responses=...): the 401 in the OpenAPI document.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorBody,
        "description": "missing, invalid or revoked API key",
        "headers": {
            "WWW-Authenticate": {
                "description": "the Bearer challenge (RFC 6750)",
                "schema": {"type": "string"},
            }
        },
    }
}

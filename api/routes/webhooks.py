"""Webhook routes under /v1: a job's or batch's deliveries, redelivery, and tenant endpoints."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.auth import AUTH_DEPENDENCIES, AUTH_RESPONSES, CallerDep
from api.deps import JobServiceDep
from api.routes.jobs import API_PREFIX, parse_job_id
from api.schemas import (
    ErrorBody,
    WebhookDeliveriesPublic,
    WebhookDeliveryPublic,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointsPublic,
)
from core import deliveries, tenants
from core.errors import InputError, NotFoundError
from core.idempotency import request_fingerprint
from core.idempotency_store import IdempotentRequest, create_or_replay
from core.settings import Settings

router = APIRouter(
    prefix=API_PREFIX,
    tags=["webhooks"],
    dependencies=AUTH_DEPENDENCIES,
    responses=AUTH_RESPONSES,
)

_JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no job has this id"},
}


@router.get(
    "/jobs/{job_id}/deliveries", response_model=WebhookDeliveriesPublic, responses=_JOB_RESPONSES
)
def read_job_deliveries(job_id: str, caller: CallerDep, service: JobServiceDep) -> dict[str, Any]:
    """Return the job's webhook deliveries with every attempt, oldest first."""
    data = deliveries.list_job_deliveries(
        service.database, parse_job_id(job_id), tenant_id=caller.tenant_id
    )
    return {"data": data}


@router.get(
    "/batches/{batch_id}/deliveries",
    response_model=WebhookDeliveriesPublic,
    responses={404: {"model": ErrorBody, "description": "no batch has this id"}},
)
def read_batch_deliveries(
    batch_id: str, caller: CallerDep, service: JobServiceDep
) -> dict[str, Any]:
    """Return the batch's batch.completed deliveries with every attempt."""
    data = deliveries.list_batch_deliveries(
        service.database, _parse_batch_id(batch_id), tenant_id=caller.tenant_id
    )
    return {"data": data}


@router.post(
    "/jobs/{job_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDeliveryPublic,
    responses={
        200: {
            "model": WebhookDeliveryPublic,
            "description": "an earlier redelivery with this Idempotency-Key; not sent again",
        },
        404: {"model": ErrorBody, "description": "no job or delivery has this id"},
        409: {
            "model": ErrorBody,
            "description": "the delivery's endpoint is disabled, or idempotency_key_reused",
        },
    },
)
async def redeliver(
    request: Request,
    job_id: str,
    delivery_id: str,
    caller: CallerDep,
    service: JobServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    """Send a delivery again now, with the same event id and body.

    A repeated Idempotency-Key returns the delivery's current state without sending it again.
    """
    parsed_job_id, parsed_delivery_id = parse_job_id(job_id), delivery_id[:64]

    def send(idempotency: IdempotentRequest | None = None) -> dict[str, Any]:
        return deliveries.redeliver(
            service.database,
            service.settings,
            parsed_job_id,
            parsed_delivery_id,
            tenant_id=caller.tenant_id,
            idempotency=idempotency,
        )

    if not idempotency_key:
        return JSONResponse(await run_in_threadpool(send), status_code=202)

    idempotency = _idempotent_request(
        request, caller.tenant_id, idempotency_key, "redelivery", {}, service.settings
    )
    delivery, sent = await run_in_threadpool(
        lambda: create_or_replay(
            service.database,
            idempotency,
            create=lambda: send(idempotency),
            load=lambda _: deliveries.read_delivery(
                service.database, parsed_job_id, parsed_delivery_id, tenant_id=caller.tenant_id
            ),
        )
    )
    return JSONResponse(delivery, status_code=202 if sent else 200)


@router.post(
    "/webhooks/endpoints",
    status_code=201,
    response_model=WebhookEndpointCreated,
    responses={
        200: {
            "model": WebhookEndpointCreated,
            "description": "the endpoint an earlier request with this Idempotency-Key created",
        },
        403: {"model": ErrorBody, "description": "the request has no tenant (no API key)"},
        409: {
            "model": ErrorBody,
            "description": "the tenant has too many endpoints, or idempotency_key_reused",
        },
        422: {"model": ErrorBody, "description": "the URL is invalid or not allowed"},
    },
)
async def create_endpoint(
    request: Request,
    body: WebhookEndpointCreate,
    caller: CallerDep,
    service: JobServiceDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    """Create a webhook endpoint for every event of the tenant; the secret is returned only here.

    A repeated Idempotency-Key returns the endpoint it created, secret included (200).
    """

    def create(idempotency: IdempotentRequest | None = None) -> dict[str, Any]:
        return deliveries.create_endpoint(
            service.database,
            service.settings,
            body.url,
            tenant_id=caller.tenant_id,
            idempotency=idempotency,
        )

    if not idempotency_key:
        return JSONResponse(await run_in_threadpool(create), status_code=201)

    idempotency = _idempotent_request(
        request, caller.tenant_id, idempotency_key, "endpoint", {"url": body.url}, service.settings
    )
    endpoint, created = await run_in_threadpool(
        lambda: create_or_replay(
            service.database,
            idempotency,
            create=lambda: create(idempotency),
            load=lambda endpoint_id: deliveries.read_endpoint_with_secret(
                service.database, endpoint_id, tenant_id=caller.tenant_id
            ),
        )
    )
    return JSONResponse(endpoint, status_code=201 if created else 200)


def _idempotent_request(
    request: Request,
    tenant_id: str | None,
    key: str,
    resource_type: str,
    fields: dict[str, Any],
    settings: Settings,
) -> IdempotentRequest:
    fingerprint = request_fingerprint("POST", request.url.path, fields, None)
    return IdempotentRequest.build(
        tenant_id, key, fingerprint, resource_type, settings.idempotency_ttl_s
    )


@router.get("/webhooks/endpoints", response_model=WebhookEndpointsPublic)
def read_endpoints(caller: CallerDep, service: JobServiceDep) -> dict[str, Any]:
    """Return the tenant's webhook endpoints without their secrets."""
    return {"data": deliveries.list_endpoints(service.database, tenant_id=caller.tenant_id)}


@router.delete(
    "/webhooks/endpoints/{endpoint_id}",
    status_code=204,
    response_class=Response,
    responses={404: {"model": ErrorBody, "description": "no endpoint has this id"}},
)
def delete_endpoint(endpoint_id: str, caller: CallerDep, service: JobServiceDep) -> Response:
    """Delete a webhook endpoint and its deliveries."""
    deliveries.delete_endpoint(service.database, endpoint_id[:64], tenant_id=caller.tenant_id)
    return Response(status_code=204)


class WebhookSecretPublic(BaseModel):
    """The secret that signs deliveries to the webhook_url of the tenant's jobs and batches."""

    secret: str = Field(description="whsec_ and base64; verify webhook-signature with it")


_SECRET_RESPONSES: dict[int | str, dict[str, Any]] = {
    403: {
        "model": ErrorBody,
        "description": "the request has no tenant (no API key); OCRQ_WEBHOOK_SECRET signs then",
    },
}


@router.get("/webhooks/secret", response_model=WebhookSecretPublic, responses=_SECRET_RESPONSES)
def read_webhook_secret(caller: CallerDep, service: JobServiceDep) -> dict[str, str]:
    """Return the tenant's signing secret for job and batch webhook_url deliveries.

    Endpoints created with POST /v1/webhooks/endpoints have their own secrets instead.
    """
    tenant_id = _require_tenant(caller.tenant_id)
    return {"secret": tenants.tenant_webhook_secret(service.database, tenant_id=tenant_id)}


@router.post(
    "/webhooks/secret/rotate", response_model=WebhookSecretPublic, responses=_SECRET_RESPONSES
)
def rotate_webhook_secret(caller: CallerDep, service: JobServiceDep) -> dict[str, str]:
    """Replace the tenant's webhook_url signing secret and return the new one.

    It applies at once, to pending retries too: deliveries are signed when they are sent.
    """
    tenant_id = _require_tenant(caller.tenant_id)
    return {"secret": tenants.rotate_webhook_secret(service.database, tenant_id=tenant_id)}


def _require_tenant(tenant_id: str | None) -> str:
    if tenant_id is None:
        message = (
            "The webhook secret belongs to a tenant; send an API key. Without one "
            "(OCRQ_AUTH_REQUIRED is off), OCRQ_WEBHOOK_SECRET signs webhook_url deliveries."
        )
        raise InputError(message, code="tenant_required", http_status=403)
    return tenant_id


def _parse_batch_id(batch_id: str) -> str:
    try:
        return str(uuid.UUID(batch_id))
    except ValueError:
        message = f"Batch {batch_id[:64]!r} was not found; batch ids are UUIDs."
        raise NotFoundError(message, code="batch_not_found") from None

"""Batch routes under /v1: submit many documents with shared options, follow them, cancel them."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from api.auth import AUTH_DEPENDENCIES, AUTH_RESPONSES, Caller, CallerDep
from api.batch_upload import read_batch_upload
from api.deps import JobServiceDep
from api.routes.jobs import API_PREFIX, POLL_RETRY_AFTER_S, parse_job_options
from api.schemas import ErrorBody, JobPublic
from api.sources import is_json_request, option_fields, read_json_object
from core.batches import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BatchDocument,
    BatchOptions,
    BatchService,
)
from core.errors import InputError
from core.idempotency import file_sha256, request_fingerprint
from core.idempotency_store import IdempotentRequest
from core.inputs import parse_source

# Options a batch shares with all its jobs, as form fields or under "options" in JSON.
BATCH_OPTIONS = ("mode", "task", "target", "priority", "webhook_url", "metadata")

router = APIRouter(
    prefix=API_PREFIX, tags=["batches"], dependencies=AUTH_DEPENDENCIES, responses=AUTH_RESPONSES
)


class BatchCounts(BaseModel):
    """How many of the batch's jobs are in each state."""

    queued: int
    running: int
    succeeded: int
    partial: int
    failed: int
    canceled: int


class BatchPublic(BaseModel):
    """A batch with its counts per job state and one page of its jobs (submission order)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str = Field(description="running, completed (every job ended) or canceled")
    jobs_total: int
    counts: BatchCounts
    priority: str
    created_at: str
    finished_at: str | None = None
    jobs: list[JobPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page of jobs")


_OPTIONS_PROPERTIES: dict[str, Any] = {
    "mode": {"type": "string"},
    "task": {"type": "string"},
    "target": {"type": "string"},
    "priority": {"type": "string", "enum": ["high", "normal", "low"]},
    "webhook_url": {"type": "string", "format": "uri", "description": "gets batch.completed"},
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one part per document, at most OCRQ_MAX_BATCH_JOBS",
                        },
                        **_OPTIONS_PROPERTIES,
                        "metadata": {"type": "string", "description": "a JSON object"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["sources"],
                    "properties": {
                        "sources": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "description": '{"url": ...} or {"s3": {"bucket", "key"}}',
                            },
                        },
                        "options": {
                            "type": "object",
                            "properties": {**_OPTIONS_PROPERTIES, "metadata": {"type": "object"}},
                        },
                    },
                }
            },
        },
    }
}
_BATCH_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no batch of this tenant has this id"},
}


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchPublic,
    openapi_extra=_BATCH_BODY,
    responses={
        200: {"model": BatchPublic, "description": "an earlier batch with this Idempotency-Key"},
        409: {"model": ErrorBody, "description": "idempotency_key_reused"},
        413: {"model": ErrorBody, "description": "a file over OCRQ_MAX_FILE_BYTES"},
        422: {
            "model": ErrorBody,
            "description": (
                "a document was rejected (the message names its index; code as for one job), "
                "a bad option, or not 1 to OCRQ_MAX_BATCH_JOBS documents; nothing is stored"
            ),
        },
    },
)
async def create_batch(
    request: Request,
    service: JobServiceDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    """Accept many documents (multipart `file` parts, or JSON `sources`) as one batch.

    Every document is checked before anything is stored: one rejected document rejects the
    whole batch (422, its index in the message), so a batch is never half accepted.
    """
    batches = BatchService(service)
    if is_json_request(request):
        body = await read_json_object(request)
        documents, options = _parse_json_batch(body)
        fingerprint = request_fingerprint(
            "POST", request.url.path, {"sources": body.get("sources"), **options.__dict__}, None
        )
        return await _create(batches, documents, options, fingerprint, caller, idempotency_key)

    upload = await read_batch_upload(
        request,
        max_file_bytes=service.settings.max_file_bytes,
        max_files=service.settings.max_batch_jobs,
    )
    try:
        options = _parse_batch_options(upload.fields)
        documents = [BatchDocument(path=item.path, filename=item.filename) for item in upload.files]
        fingerprint = ""
        if idempotency_key:
            fingerprint = await run_in_threadpool(_files_fingerprint, request, documents, options)
        return await _create(batches, documents, options, fingerprint, caller, idempotency_key)
    finally:
        upload.discard()


@router.get("/batches/{batch_id}", response_model=BatchPublic, responses=_BATCH_NOT_FOUND)
def read_batch(
    batch_id: str,
    service: JobServiceDep,
    caller: CallerDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """Return the batch, its job counts per state and a page of its jobs.

    A batch that is still running carries Retry-After, as a polled job does.
    """
    batch = BatchService(service).get_batch(
        batch_id, tenant_id=caller.tenant_id, limit=limit, cursor=cursor
    )
    if batch["status"] == "running":
        response.headers["Retry-After"] = str(POLL_RETRY_AFTER_S)
    return batch


@router.delete("/batches/{batch_id}", response_model=BatchPublic, responses=_BATCH_NOT_FOUND)
def cancel_batch(batch_id: str, service: JobServiceDep, caller: CallerDep) -> dict[str, Any]:
    """Cancel the batch's queued and running jobs; an ended batch is returned unchanged."""
    return BatchService(service).cancel_batch(batch_id, tenant_id=caller.tenant_id)


async def _create(
    batches: BatchService,
    documents: list[BatchDocument],
    options: BatchOptions,
    fingerprint: str,
    caller: Caller,
    idempotency_key: str | None,
) -> JSONResponse:
    if not idempotency_key:
        batch = await run_in_threadpool(
            lambda: batches.create_batch(documents, options, tenant_id=caller.tenant_id)
        )
        return _batch_response(batch, status_code=202)

    ttl_s = batches.settings.idempotency_ttl_s
    idempotency = IdempotentRequest.build(
        caller.tenant_id, idempotency_key, fingerprint, "batch", ttl_s
    )
    batch, created = await run_in_threadpool(
        lambda: batches.create_or_replay_batch(
            documents, options, idempotency=idempotency, tenant_id=caller.tenant_id
        )
    )
    return _batch_response(batch, status_code=202 if created else 200)


def _parse_json_batch(body: dict[str, Any]) -> tuple[list[BatchDocument], BatchOptions]:
    unknown = sorted(set(body) - {"sources", "options"})
    if unknown:
        message = f"Unknown field {unknown[0]!r}; expected sources and options."
        raise InputError(message, code="unknown_field")
    sources = body.get("sources")
    if not isinstance(sources, list):
        message = 'Expected "sources" to be an array of {"url"} or {"s3"} objects.'
        raise InputError(message, code="invalid_source")
    raw_options = body.get("options") or {}
    if not isinstance(raw_options, dict):
        raise InputError('Expected "options" to be a JSON object.', code="invalid_option")
    unknown = sorted(set(raw_options) - set(BATCH_OPTIONS))
    if unknown:
        message = f"Unknown option {unknown[0][:64]!r}; expected any of {', '.join(BATCH_OPTIONS)}."
        raise InputError(message, code="unknown_field")

    options = _parse_batch_options(option_fields(raw_options))
    documents = []
    for index, item in enumerate(sources):
        if not isinstance(item, dict):
            message = f'Expected source {index} to be {{"url"}} or {{"s3"}}, got {item!r:.60}.'
            raise InputError(message, code="invalid_source")
        try:
            documents.append(BatchDocument(source=parse_source(item)))
        except InputError as exc:
            message = f"Document {index} of the batch was rejected ({exc.code}): {exc.message}"
            raise InputError(message, code=exc.code) from exc
    return documents, options


def _parse_batch_options(fields: dict[str, str]) -> BatchOptions:
    """Check the shared options with the same rules as one job's (api.routes.jobs)."""
    unknown = sorted(set(fields) - set(BATCH_OPTIONS))
    if unknown:
        message = f"Unknown option {unknown[0]!r}; expected any of {', '.join(BATCH_OPTIONS)}."
        raise InputError(message, code="unknown_field")
    job_fields = {name: value for name, value in fields.items() if name != "priority"}
    parsed = parse_job_options(job_fields)
    return BatchOptions(
        mode=parsed["mode"],
        task=parsed["task"],
        target=parsed["target"],
        priority=fields.get("priority") or "normal",
        webhook_url=parsed["webhook_url"],
        metadata=parsed["metadata"],
    )


def _files_fingerprint(
    request: Request, documents: list[BatchDocument], options: BatchOptions
) -> str:
    digests = hashlib.sha256()
    for document in documents:
        assert document.path is not None
        digests.update(file_sha256(document.path).encode())
    fields = {**options.__dict__, "metadata": json.dumps(options.metadata, sort_keys=True)}
    return request_fingerprint("POST", request.url.path, fields, digests.hexdigest())


def _batch_response(batch: dict[str, Any], *, status_code: int) -> JSONResponse:
    location = f"{API_PREFIX}/batches/{batch['id']}"
    return JSONResponse(batch, status_code=status_code, headers={"Location": location})

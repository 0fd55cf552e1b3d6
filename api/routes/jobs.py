"""Job routes under /v1: submit a document, read a job and its result, cancel or delete it."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from api.auth import AUTH_DEPENDENCIES, AUTH_RESPONSES, Caller, CallerDep
from api.deps import JobServiceDep
from api.schemas import ErrorBody, JobPublic, JobResult, JobResultLinks
from api.sources import (
    SOURCE_KEYS,
    is_json_request,
    load_json,
    read_json_object,
    split_job_body,
)
from api.upload import MAX_FIELD_BYTES, read_upload
from core.errors import ConflictError, InputError, NotFoundError
from core.idempotency import file_sha256, request_fingerprint
from core.idempotency_store import IdempotentRequest
from core.inputs import parse_source
from core.job_options import DEFAULT_MODE, DEFAULT_TASK, JOB_MODES, JOB_TASKS
from core.jobs import JobService, job_to_dict
from core.logging import get_logger
from core.results import result_links
from core.states import JobStatus

API_PREFIX = "/v1"
# GET /v1/jobs/{id}?wait= keeps a request open at most this long, and re-reads the job this often.
MAX_WAIT_S = 60
WAIT_POLL_INTERVAL_S = 0.25
# Seconds a client should wait before polling a queued or running job again.
POLL_RETRY_AFTER_S = 2
# Form fields POST /v1/jobs accepts beside the file.
JOB_FIELDS = ("mode", "task", "target", "webhook_url", "metadata", "password")

# JSON names of the Python types json.loads returns, for error messages.
_JSON_TYPE_NAMES = {
    list: "array",
    str: "string",
    int: "number",
    float: "number",
    bool: "boolean",
    type(None): "null",
}

log = get_logger(__name__)
router = APIRouter(
    prefix=API_PREFIX, tags=["jobs"], dependencies=AUTH_DEPENDENCIES, responses=AUTH_RESPONSES
)

_JOB_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "no job has this id"},
}
_MODE_SCHEMA = {"type": "string", "enum": list(JOB_MODES), "default": DEFAULT_MODE}
_TASK_SCHEMA = {"type": "string", "enum": list(JOB_TASKS), "default": DEFAULT_TASK}
_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "mode": _MODE_SCHEMA,
                        "task": _TASK_SCHEMA,
                        "target": {"type": "string", "description": "phrase for task locate"},
                        "webhook_url": {"type": "string", "format": "uri"},
                        "metadata": {"type": "string", "description": "a JSON object"},
                        "password": {"type": "string", "description": "for encrypted PDFs"},
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": "a document to fetch: exactly one of url or s3",
                    "additionalProperties": False,
                    "properties": {
                        "url": {"type": "string", "format": "uri", "maxLength": 2048},
                        "s3": {
                            "type": "object",
                            "required": ["bucket", "key"],
                            "properties": {
                                "bucket": {
                                    "type": "string",
                                    "description": "one of OCRQ_S3_INPUT_BUCKETS",
                                },
                                "key": {"type": "string"},
                            },
                        },
                        "mode": _MODE_SCHEMA,
                        "task": _TASK_SCHEMA,
                        "target": {"type": "string", "description": "phrase for task locate"},
                        "webhook_url": {"type": "string", "format": "uri"},
                        "metadata": {"type": "object"},
                    },
                }
            },
        },
    }
}


@router.post(
    "/jobs",
    status_code=202,
    response_model=JobPublic,
    openapi_extra=_UPLOAD_SCHEMA,
    responses={
        200: {"model": JobPublic, "description": "an earlier job with this Idempotency-Key"},
        400: {"model": ErrorBody, "description": "malformed multipart body"},
        409: {
            "model": ErrorBody,
            "description": "idempotency_key_reused: the key was used for a different request",
        },
        413: {"model": ErrorBody, "description": "file over OCRQ_MAX_FILE_BYTES"},
        415: {"model": ErrorBody, "description": "not a supported document type"},
        422: {
            "model": ErrorBody,
            "description": (
                "unreadable document, over a limit, bad option; for url and s3 also "
                "invalid_url, url_not_allowed (OCRQ_URL_ALLOWLIST), bucket_not_allowed "
                "(OCRQ_S3_INPUT_BUCKETS)"
            ),
        },
    },
)
async def create_job(
    request: Request,
    service: JobServiceDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JSONResponse:
    """Accept a document (multipart field `file`, or JSON `url` or `s3`) and queue a job for it.

    An upload is checked (size, type by content, page count and size, PDF password) before
    anything is stored or queued. A URL passes the SSRF guard and an S3 location the bucket
    allow-list at once; the worker fetches and checks the document. A repeated Idempotency-Key
    with the same request returns the original job with 200; anything different gets 409.
    """
    if is_json_request(request):
        return await create_job_from_source(request, service, caller, idempotency_key)
    upload = await read_upload(
        request, max_file_bytes=service.settings.max_file_bytes, temp_dir=None
    )
    try:
        options = parse_job_options(upload.fields)
        path = upload.path
        assert path is not None
        if not idempotency_key:
            job = await run_in_threadpool(
                lambda: service.create_job(
                    path, filename=upload.filename, tenant_id=caller.tenant_id, **options
                )
            )
            return _job_response(job_to_dict(job), status_code=202)

        fingerprint = await run_in_threadpool(job_fingerprint, request.url.path, options, path)
        idempotency = IdempotentRequest.build(
            caller.tenant_id,
            idempotency_key,
            fingerprint,
            "job",
            service.settings.idempotency_ttl_s,
        )
        job, created = await run_in_threadpool(
            lambda: service.create_or_replay_job(
                path,
                idempotency=idempotency,
                tenant_id=caller.tenant_id,
                filename=upload.filename,
                **options,
            )
        )
        return _job_response(job_to_dict(job), status_code=202 if created else 200)
    except InputError as exc:
        log.info("job.rejected", code=exc.code, bytes=upload.size_bytes)
        raise
    finally:
        upload.discard()


async def create_job_from_source(
    request: Request, service: JobService, caller: Caller, idempotency_key: str | None
) -> JSONResponse:
    """Create a job from a JSON body {"url"|"s3": ..., options...}; see create_job."""
    body = await read_json_object(request)
    expected = [*SOURCE_KEYS, *(name for name in JOB_FIELDS if name != "password")]
    unknown = sorted(set(body) - set(expected) - {"password"})
    if unknown:
        message = f"Unknown field {unknown[0][:64]!r}; expected any of {', '.join(expected)}."
        raise InputError(message, code="unknown_field")
    source_part, fields = split_job_body(body)
    if "password" in fields:
        message = "A password is accepted only with an uploaded file, not with url or s3."
        raise InputError(message, code="unknown_field")
    options = parse_job_options(fields)
    options.pop("password")
    source = parse_source(source_part)
    if not idempotency_key:
        job = await run_in_threadpool(
            lambda: service.create_job(None, source=source, tenant_id=caller.tenant_id, **options)
        )
        return _job_response(job_to_dict(job), status_code=202)

    fingerprint = request_fingerprint("POST", request.url.path, {**options, "source": source}, None)
    idempotency = IdempotentRequest.build(
        caller.tenant_id, idempotency_key, fingerprint, "job", service.settings.idempotency_ttl_s
    )
    job, created = await run_in_threadpool(
        lambda: service.create_or_replay_job(
            None, idempotency=idempotency, tenant_id=caller.tenant_id, source=source, **options
        )
    )
    return _job_response(job_to_dict(job), status_code=202 if created else 200)


@router.get(
    "/jobs/{job_id}",
    response_model=JobPublic,
    responses={**_JOB_RESPONSES, 422: {"model": ErrorBody, "description": "wait over 60 s"}},
)
async def read_job(
    job_id: str,
    service: JobServiceDep,
    caller: CallerDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to hold the request until the status or pages_done changes.",
        ),
    ] = 0,
) -> JSONResponse:
    """Return the job's status, page counts and error.

    With `wait`, the response comes as soon as the status or pages_done differs from the first
    read, or after `wait` seconds. A job that is still queued or running carries Retry-After.
    """
    job_id = parse_job_id(job_id)
    job = await run_in_threadpool(service.get_job_dict, job_id, tenant_id=caller.tenant_id)
    seen = (job["status"], job["pages_done"])
    deadline = time.monotonic() + wait
    while not JobStatus(job["status"]).is_final and time.monotonic() < deadline:
        await asyncio.sleep(min(WAIT_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))
        job = await run_in_threadpool(service.get_job_dict, job_id, tenant_id=caller.tenant_id)
        if (job["status"], job["pages_done"]) != seen:
            break

    headers = {} if JobStatus(job["status"]).is_final else {"Retry-After": str(POLL_RETRY_AFTER_S)}
    return JSONResponse(job, headers=headers)


@router.get(
    "/jobs/{job_id}/result",
    response_model=JobResult | JobResultLinks,
    responses={
        200: {"description": "JobResult, or JobResultLinks with links=true"},
        **_JOB_RESPONSES,
        409: {"model": ErrorBody, "description": "the job is still queued or running"},
    },
)
def read_result(
    job_id: str,
    request: Request,
    service: JobServiceDep,
    caller: CallerDep,
    links: Annotated[bool, Query(description="download links instead of content")] = False,
) -> dict[str, Any]:
    """Return a finished job's markdown and per-page results (blocks, timings).

    With links=true: URLs of result.json, result.md, each page's JSON and each figure, presigned
    for OCRQ_PRESIGN_EXPIRES_S on S3, or this API's routes on a file:// storage.
    """
    job_id = parse_job_id(job_id)
    _require_finished(service, job_id, caller.tenant_id)
    if links:
        job = service.get_job(job_id, tenant_id=caller.tenant_id)
        api_base = f"{str(request.base_url).rstrip('/')}{API_PREFIX}/jobs/{job_id}"
        expires_s = service.settings.presign_expires_s
        return result_links(service.storage, job, job.pages, api_base, expires_s)
    return service.get_result(job_id, tenant_id=caller.tenant_id)


@router.get(
    "/jobs/{job_id}/result.md",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/markdown": {}}, "description": "the document markdown"},
        **_JOB_RESPONSES,
        409: {"model": ErrorBody, "description": "the job is still queued or running"},
    },
)
def read_result_markdown(
    job_id: str, service: JobServiceDep, caller: CallerDep
) -> PlainTextResponse:
    """Return a finished job's document markdown, pages joined by the page separator."""
    job_id = parse_job_id(job_id)
    _require_finished(service, job_id, caller.tenant_id)
    markdown = service.get_result_markdown(job_id, tenant_id=caller.tenant_id)
    return PlainTextResponse(markdown, media_type="text/markdown; charset=utf-8")


@router.delete(
    "/jobs/{job_id}",
    response_model=JobPublic,
    responses={
        200: {"model": JobPublic, "description": "the queued job is canceled"},
        202: {"model": JobPublic, "description": "the running job stops before its next page"},
        204: {"description": "the finished job and its stored data are deleted"},
        **_JOB_RESPONSES,
    },
)
def delete_job(job_id: str, service: JobServiceDep, caller: CallerDep) -> Response:
    """Cancel a queued or running job, or delete a finished job and its stored data."""
    job_id = parse_job_id(job_id)
    previous = service.get_job(job_id, tenant_id=caller.tenant_id).status
    job = service.cancel_or_delete(job_id, tenant_id=caller.tenant_id)
    if job is None:
        return Response(status_code=204)
    status_code = 202 if previous == JobStatus.RUNNING else 200
    return JSONResponse(job_to_dict(job), status_code=status_code)


def parse_job_id(job_id: str) -> str:
    """Return the job id in canonical form; a malformed id is reported as not found (404)."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        message = f"Job {job_id[:64]!r} was not found; job ids are UUIDs."
        raise NotFoundError(message, code="job_not_found") from None


def parse_job_options(fields: dict[str, str]) -> dict[str, Any]:
    """Turn the form fields into create_job's keyword arguments; raise InputError (422) when bad.

    The service checks mode, task and target against their allowed values.
    """
    unknown = sorted(set(fields) - set(JOB_FIELDS))
    if unknown:
        message = (
            f"Unknown form field {unknown[0]!r}; expected file and any of {', '.join(JOB_FIELDS)}."
        )
        raise InputError(message, code="unknown_field")

    options: dict[str, Any] = {
        "mode": fields.get("mode") or DEFAULT_MODE,
        "task": fields.get("task") or DEFAULT_TASK,
        "target": fields.get("target") or None,
        # Never stored: a PDF it opens is stored as a decrypted copy at intake (core.inputs).
        "password": fields.get("password") or None,
        "webhook_url": None,
        "metadata": None,
    }

    webhook_url = fields.get("webhook_url")
    if webhook_url:
        scheme: str | None
        hostname: str | None
        try:
            parsed = urlparse(webhook_url)
            scheme, hostname, _ = parsed.scheme, parsed.hostname, parsed.port
        except ValueError:
            # urlparse refuses an unclosed IPv6 bracket; .port refuses a port past 65535.
            scheme = hostname = None
        has_space = any(char.isspace() or not char.isprintable() for char in webhook_url)
        if scheme not in ("http", "https") or not hostname or has_space:
            message = f"Expected webhook_url to be an http or https URL, got {webhook_url[:200]!r}."
            raise InputError(message, code="invalid_webhook_url")
        options["webhook_url"] = webhook_url

    raw_metadata = fields.get("metadata")
    if raw_metadata:
        try:
            metadata = load_json(raw_metadata)
            received = f"a JSON {_JSON_TYPE_NAMES.get(type(metadata), 'value')}"
        except ValueError as exc:
            metadata = None
            received = f"text that is not valid JSON ({exc})"
        if not isinstance(metadata, dict):
            message = (
                f"Expected metadata to be a JSON object of at most {MAX_FIELD_BYTES} bytes, "
                f"got {received}."
            )
            raise InputError(message, code="invalid_metadata")
        options["metadata"] = metadata
    return options


def job_fingerprint(path: str, options: dict[str, Any], document: Path) -> str:
    """Return the idempotency fingerprint of a POST /v1/jobs: its options and file digest.

    The PDF password is left out: it only unlocks the same file, and a hash of it should not
    be stored.
    """
    fields = {name: value for name, value in options.items() if name != "password"}
    return request_fingerprint("POST", path, fields, file_sha256(document))


def _require_finished(service: JobService, job_id: str, tenant_id: str | None) -> None:
    status = JobStatus(service.get_job(job_id, tenant_id=tenant_id).status)
    if not status.is_final:
        message = (
            f"Job {job_id} is still {status.value}; its result is ready once the status is "
            "succeeded, partial, failed or canceled."
        )
        raise ConflictError(message, code="job_not_finished")


def _job_response(job: dict[str, Any], *, status_code: int) -> JSONResponse:
    location = f"{API_PREFIX}/jobs/{job['id']}"
    return JSONResponse(job, status_code=status_code, headers={"Location": location})

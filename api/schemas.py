"""Response bodies of the HTTP API, as pydantic models (they also shape the OpenAPI document)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class ErrorDetail(BaseModel):
    """A machine-readable code and a one-sentence message."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    detail: ErrorDetail


class JobPublic(BaseModel):
    """A job as clients see it; `error` is set when the job (or some page) failed."""

    model_config = ConfigDict(extra="ignore")

    id: str
    status: str = Field(description="queued, running, succeeded, partial, failed or canceled")
    pages_total: int | None = Field(description="page count, known once the document is read")
    pages_done: int
    engine: str
    mode: str
    task: str
    error: ErrorDetail | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class BlockPublic(BaseModel):
    """One layout region of a page: a label, a pixel box [x1, y1, x2, y2] and its text."""

    model_config = ConfigDict(extra="allow")

    label: str
    bbox: list[int]
    text: str


class PageResultPublic(BaseModel):
    """The result of one page; `index` is 0-based."""

    model_config = ConfigDict(extra="allow")

    index: int
    width: int | None = None
    height: int | None = None
    markdown: str | None = None
    blocks: list[BlockPublic] = Field(default_factory=list)
    finish_reason: str | None = None
    timings_ms: dict[str, int] = Field(default_factory=dict)
    status: str | None = Field(default=None, description="the page's status")
    error: ErrorDetail | None = None


class JobResult(BaseModel):
    """A finished job's document markdown (pages joined) and its per-page results."""

    model_config = ConfigDict(extra="allow")

    job_id: str
    markdown: str
    pages: list[PageResultPublic]


class HealthStatus(BaseModel):
    """The liveness or readiness state; `checks` maps each dependency to ok or its failure."""

    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class WebhookAttemptPublic(BaseModel):
    """One HTTP attempt of a delivery: the receiver's status, or the error before one arrived."""

    number: int = Field(description="1-based attempt number")
    started_at: datetime
    duration_ms: int | None = None
    status_code: int | None = None
    error: str | None = None


class WebhookDeliveryPublic(BaseModel):
    """One event sent to one target; `id` is the event id, the same on every retry."""

    id: str = Field(description="the webhook-id header and the event's id")
    event_type: str = Field(
        description="job.succeeded, job.partial, job.failed, job.canceled or batch.completed"
    )
    url: str
    endpoint_id: str | None = Field(description="the tenant endpoint, or null for a webhook_url")
    job_id: str | None = None
    batch_id: str | None = None
    status: str = Field(description="pending, succeeded or failed")
    attempts: int
    next_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    created_at: datetime
    delivered_at: datetime | None = None
    attempt_log: list[WebhookAttemptPublic] = Field(default_factory=list)


class WebhookDeliveriesPublic(BaseModel):
    """The deliveries of a job or batch, oldest first."""

    data: list[WebhookDeliveryPublic]


class WebhookEndpointCreate(BaseModel):
    """A standing webhook target of the caller's tenant."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2000, description="an http or https URL")


class WebhookEndpointPublic(BaseModel):
    """A tenant's webhook endpoint; a 410 from it disables it."""

    id: str
    url: str
    created_at: datetime
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class WebhookEndpointCreated(WebhookEndpointPublic):
    """A new endpoint with its signing secret, returned only by the request that created it."""

    secret: str = Field(description="whsec_...; verify deliveries with it")


class WebhookEndpointsPublic(BaseModel):
    """The tenant's webhook endpoints, oldest first."""

    data: list[WebhookEndpointPublic]


class PageLink(BaseModel):
    """Download link of one page's JSON; `index` is 0-based."""

    index: int
    url: str | None


class FigureLink(BaseModel):
    """Download link of one figure crop (`{page}_{k}.jpg`)."""

    name: str
    url: str | None


class JobResultLinks(BaseModel):
    """Download links instead of inline content (GET …/result?links=true).

    On S3 the URLs are presigned and stop working at `expires_at` (OCRQ_PRESIGN_EXPIRES_S). On a
    file:// storage they are this API's routes, need the API key, and `expires_at` is null. A
    result file the job never wrote (a canceled job) has a null URL.
    """

    job_id: str
    expires_at: datetime | None
    result_json: str | None
    result_md: str | None
    pages: list[PageLink]
    figures: list[FigureLink]

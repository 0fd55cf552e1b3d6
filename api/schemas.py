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

"""Service settings, read from the environment with the prefix OCRQ_."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.errors import ConfigError

EngineName = Literal["auto", "deepseek-ocr", "rapidocr"]


def default_data_dir() -> Path:
    """Return the folder that contains the embedded database and local storage."""
    return Path.home() / ".ocrq"


class Settings(BaseSettings):
    """Every setting of ocrq; the field name upper-cased with OCRQ_ in front is its variable."""

    model_config = SettingsConfigDict(env_prefix="OCRQ_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    # Unset: SQLite in data_dir. Example: postgresql+psycopg://user@127.0.0.1:5432/ocrq
    database_url: str | None = None
    # Unset: embedded mode, tasks run in the calling process. Example: redis://127.0.0.1:6379/0
    broker_url: str | None = None
    # Unset: file:// under data_dir. Or s3://bucket/prefix, with s3_endpoint_url for non-AWS
    # servers.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    # Seconds an S3 request waits to connect and then for each response, so an unresponsive
    # storage server fails a request (503) instead of blocking it.
    s3_connect_timeout_s: float = Field(default=3.0, gt=0)
    s3_read_timeout_s: float = Field(default=10.0, gt=0)

    engine: EngineName = "auto"
    model_path: Path | None = None
    device: str = "cpu"
    # The deepseek-ocr engine. A page's prompt and output share the model's 8192-token window,
    # so unset max_new_tokens means the rest of that window; a smaller value caps the output.
    max_new_tokens: int | None = Field(default=None, ge=1, le=8192)
    # Maximum tiles per page in gundam mode; a tile grid has 2 to 9 tiles.
    max_tiles: int = Field(default=6, ge=2, le=9)
    # Maximum pages of one job that the engine reads in one batch.
    max_batch_pages: int = Field(default=8, ge=1)
    # auto: bfloat16 on CUDA, float32 on other devices.
    model_dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    api_url: str = "http://127.0.0.1:8000"
    api_key: SecretStr | None = None

    # Input limits; each error message names the variable behind the limit.
    max_file_bytes: int = Field(default=100 * 1024 * 1024, gt=0)
    max_pages: int = Field(default=500, gt=0)
    max_page_pixels: int = Field(default=178_956_970, gt=0)  # Pillow's own bomb threshold x2
    pdf_render_dpi: int = Field(default=144, ge=36, le=600)

    # Worker behaviour.
    max_attempts: int = Field(default=3, ge=1)
    page_max_attempts: int = Field(default=2, ge=1)
    task_time_limit_s: int = Field(default=3600, gt=0)
    # Most pages of one tenant running at once on all workers together (fair share); a
    # tenant's own tenants.max_pages_in_flight overrides it.
    tenant_max_pages_in_flight: int = Field(default=8, ge=1)
    # The sweeper sends a wake message (ocrq.process_page) for each pending page of a running
    # job with no activity for this long, so a lost message cannot strand a page. The sweeper
    # also runs at least this often. 0 turns the wake-up off.
    page_wake_after_s: int = Field(default=30, ge=0)
    debug: bool = False
    log_level: str = "INFO"

    # Comma-separated host names, IPs or CIDRs that the SSRF guard (core/ssrf.py) lets URL
    # inputs and webhook targets reach although they are loopback, private or link-local.
    url_allowlist: str = ""
    # Maximum time the worker spends downloading one {"url": ...} input, redirects included.
    url_fetch_timeout_s: float = Field(default=60.0, gt=0)
    # Comma-separated buckets that {"s3": {"bucket", "key"}} inputs may name; empty refuses all.
    # They are read with the service's own S3 credentials and OCRQ_S3_ENDPOINT_URL.
    s3_input_buckets: str = ""
    # Maximum number of documents in one POST /v1/batches.
    max_batch_jobs: int = Field(default=1000, gt=0)
    # Signs deliveries to a job's or batch's webhook_url when the job has no tenant (no-auth
    # and embedded mode): whsec_ and base64 of 24-64 random bytes. Unset: such events are dropped.
    webhook_secret: SecretStr | None = None

    # API authentication. True: every /v1 request needs `Authorization: Bearer <key>` (keys from
    # `ocrq keys create`). False is for local development only: requests then belong to no tenant.
    # `ocrq run` never reads it because it does not go through the API.
    auth_required: bool = True
    # How long an Idempotency-Key is remembered per tenant; the sweeper purges older records.
    idempotency_ttl_s: int = Field(default=24 * 3600, gt=0)

    # Results: how long the presigned URLs of GET /v1/jobs/{id}/result?links=true stay valid, and
    # how long a finished job's rows and stored objects are kept before the sweeper deletes them
    # (0 keeps them until the job is deleted).
    presign_expires_s: int = Field(default=3600, gt=0, le=7 * 24 * 3600)
    result_retention_s: int = Field(default=30 * 24 * 3600, ge=0)

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("file://", "s3://")):
            message = f"must start with file:// or s3://, got {value!r}"
            raise ValueError(message)
        return value

    @property
    def resolved_database_url(self) -> str:
        """Return the configured database URL, or the embedded SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'ocrq.db'}"

    @property
    def resolved_storage_url(self) -> str:
        """Return the configured storage URL, or a folder under data_dir."""
        if self.storage_url:
            return self.storage_url
        return f"file://{self.data_dir / 'storage'}"

    @property
    def embedded(self) -> bool:
        """Return True when no broker is configured, so tasks run in-process."""
        return not self.broker_url


def load_settings() -> Settings:
    """Build Settings from the environment; a bad value raises ConfigError naming its variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            variable = "OCRQ_" + field.upper().replace(".", "__")
            problems.append(f"{variable}: {error['msg']}")
        message = "invalid settings: " + "; ".join(problems)
        raise ConfigError(message) from exc


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the process-wide settings, built on first use."""
    return load_settings()

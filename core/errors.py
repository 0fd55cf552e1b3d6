"""Typed errors. Each carries a stable code that clients and job rows see."""

from __future__ import annotations


class OcrError(Exception):
    """Base of ocrq's errors: a machine-readable code and a one-sentence message."""

    code = "internal_error"
    http_status = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ConfigError(OcrError):
    """A setting is missing or invalid; the service must not start."""

    code = "invalid_setting"


class InputError(OcrError):
    """The client's document is unusable; never retried."""

    code = "invalid_input"
    http_status = 422

    def __init__(
        self, message: str, *, code: str | None = None, http_status: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        if http_status is not None:
            self.http_status = http_status


class TransientError(OcrError):
    """A temporary failure (storage, broker, network); retried with backoff."""

    code = "transient_error"
    http_status = 503


class NotFoundError(OcrError):
    """The job (or another resource) does not exist for this caller."""

    code = "not_found"
    http_status = 404


class ConflictError(OcrError):
    """The resource is in a state that does not allow the request."""

    code = "conflict"
    http_status = 409

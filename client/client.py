"""OcrqClient: submit documents to an ocrq API, follow their jobs and fetch the results.

Every failure (an error response, an unreachable server, a timeout) raises ClientError with a
machine-readable code and a one-sentence message, so callers handle one exception type.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

FINAL_STATUSES = frozenset({"succeeded", "partial", "failed", "canceled"})
DEFAULT_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 1.0


class ClientError(Exception):
    """An ocrq request failed; `code` is the API's error code (or a client-side one)."""

    def __init__(self, code: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(f"{message} (code {code})")
        self.code = code
        self.message = message
        self.http_status = http_status


class OcrqClient:
    """A synchronous client of the ocrq HTTP API (version /v1)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout_s, transport=transport
        )

    def __enter__(self) -> OcrqClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connection pool."""
        self._http.close()

    def submit(
        self,
        path: str | Path,
        *,
        mode: str | None = None,
        task: str | None = None,
        target: str | None = None,
        webhook_url: str | None = None,
        metadata: dict[str, Any] | None = None,
        password: str | None = None,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Upload a document and return the created job (status queued)."""
        path = Path(path)
        options = {
            "mode": mode,
            "task": task,
            "target": target,
            "webhook_url": webhook_url,
            "metadata": json.dumps(metadata) if metadata is not None else None,
            "password": password,
        }
        form = {name: value for name, value in options.items() if value is not None}
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}

        try:
            with path.open("rb") as handle:
                files = {"file": (path.name, handle, "application/octet-stream")}
                response = self._request(
                    "POST", "/v1/jobs", data=form, files=files, headers=headers
                )
        except OSError as exc:
            raise ClientError("file_unreadable", f"cannot read {path}: {exc.strerror}") from exc
        return _json(response)

    def get(self, job_id: str) -> dict[str, Any]:
        """Return the job's current state."""
        return _json(self._request("GET", f"/v1/jobs/{job_id}"))

    def result(self, job_id: str) -> dict[str, Any]:
        """Return a finished job's result: document markdown and per-page results."""
        return _json(self._request("GET", f"/v1/jobs/{job_id}/result"))

    def result_markdown(self, job_id: str) -> str:
        """Return a finished job's document markdown."""
        return self._request("GET", f"/v1/jobs/{job_id}/result.md").text

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued or running job (returns it), or delete a finished one (returns None)."""
        response = self._request("DELETE", f"/v1/jobs/{job_id}")
        return None if response.status_code == 204 else _json(response)

    def wait(
        self,
        job_id: str,
        timeout_s: float = 600.0,
        *,
        progress: bool = True,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> dict[str, Any]:
        """Poll the job until it reaches a final status and return it.

        With `progress`, a tqdm bar on stderr follows pages_done out of pages_total. Raises
        ClientError with code wait_timed_out when the job is still going after timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        bar = _progress_bar(job_id) if progress else None
        try:
            while True:
                job = self.get(job_id)
                if bar is not None:
                    _update_bar(bar, job)
                if job["status"] in FINAL_STATUSES:
                    return job
                if time.monotonic() >= deadline:
                    message = (
                        f"job {job_id} is still {job['status']} after {timeout_s:g} s; "
                        "wait longer or check it later with `ocrq status`"
                    )
                    raise ClientError("wait_timed_out", message)
                time.sleep(poll_interval_s)
        finally:
            if bar is not None:
                bar.close()

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            message = f"the request to the ocrq API at {self.base_url} timed out"
            raise ClientError("timed_out", message) from exc
        except httpx.TransportError as exc:
            message = (
                f"cannot connect to the ocrq API at {self.base_url}; "
                "is it running, and is OCRQ_API_URL right?"
            )
            raise ClientError("connection_failed", message) from exc
        if response.is_error:
            raise _error_from_response(response)
        return response


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError as exc:
        message = f"expected a JSON body from {response.request.url}, got {response.text[:80]!r}"
        raise ClientError("invalid_response", message, http_status=response.status_code) from exc
    if not isinstance(body, dict):
        message = f"expected a JSON object from {response.request.url}"
        raise ClientError("invalid_response", message, http_status=response.status_code)
    return body


def _error_from_response(response: httpx.Response) -> ClientError:
    """Turn an error response into ClientError, reading the API's {"detail": {code, message}}."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, dict) and "code" in detail:
        message = str(detail.get("message", "")) or response.reason_phrase
        return ClientError(str(detail["code"]), message, http_status=response.status_code)

    message = f"HTTP {response.status_code} {response.reason_phrase} from {response.request.url}"
    return ClientError("http_error", message, http_status=response.status_code)


def _progress_bar(job_id: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=None, desc=f"job {job_id[:8]}", unit="page", leave=False)


def _update_bar(bar: Any, job: dict[str, Any]) -> None:
    total = job.get("pages_total")
    if total is not None and bar.total != total:
        bar.total = total
    bar.n = job.get("pages_done") or 0
    bar.set_postfix_str(job["status"], refresh=False)
    bar.refresh()

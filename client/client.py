"""OcrqClient: submit documents to an ocrq API, follow their jobs and fetch the results.

Every failure (an error response, an unreachable server, a timeout) raises ClientError with a
machine-readable code and a one-sentence message, so callers handle one exception type.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from contextlib import ExitStack
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

    def result_links(self, job_id: str) -> dict[str, Any]:
        """Return download links for a finished job's result files, pages and figures.

        On S3 storage they are presigned URLs valid until `expires_at`. On file:// storage they
        are API routes, so fetch them with this client (its API key).
        """
        return _json(self._request("GET", f"/v1/jobs/{job_id}/result", params={"links": "true"}))

    def page(self, job_id: str, page_index: int) -> dict[str, Any]:
        """Return one finished page's result (0-based index), also while the job runs."""
        return _json(self._request("GET", f"/v1/jobs/{job_id}/pages/{page_index}"))

    def figure(self, job_id: str, name: str) -> bytes:
        """Return a figure crop's JPEG bytes; `name` is as in the markdown, e.g. 0_0.jpg."""
        return self._request("GET", f"/v1/jobs/{job_id}/figures/{name}").content

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

    def submit_url(
        self, url: str, *, idempotency_key: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Create a job for a document the service downloads from `url` (options as submit)."""
        return self._submit_json({"url": url, **options}, idempotency_key)

    def submit_s3(
        self, bucket: str, key: str, *, idempotency_key: str | None = None, **options: Any
    ) -> dict[str, Any]:
        """Create a job for s3://bucket/key, read with the service's own credentials."""
        return self._submit_json({"s3": {"bucket": bucket, "key": key}, **options}, idempotency_key)

    def create_batch(
        self,
        documents: Sequence[str | Path | dict[str, Any]],
        *,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> dict[str, Any]:
        """Submit many documents with shared options (mode, task, priority, webhook_url, ...).

        `documents` are all file paths (uploaded), or all sources ({"url": ...} or
        {"s3": {"bucket", "key"}}). One refused document rejects the whole batch.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        options = {name: value for name, value in options.items() if value is not None}
        if documents and all(isinstance(item, dict) for item in documents):
            body = {"sources": list(documents), "options": options}
            return _json(self._request("POST", "/v1/batches", json=body, headers=headers))

        form = {
            name: json.dumps(value) if name == "metadata" else str(value)
            for name, value in options.items()
        }
        with ExitStack() as stack:
            try:
                files = [
                    ("file", (Path(item).name, stack.enter_context(Path(item).open("rb"))))
                    for item in documents
                    if not isinstance(item, dict)
                ]
            except OSError as exc:
                message = f"cannot read {exc.filename}: {exc.strerror}"
                raise ClientError("file_unreadable", message) from exc
            if len(files) != len(documents):
                message = "pass either file paths or source dicts to create_batch, not both"
                raise ClientError("invalid_documents", message)
            response = self._request("POST", "/v1/batches", data=form, files=files, headers=headers)
        return _json(response)

    def get_batch(
        self, batch_id: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """Return the batch with its counts per job state and one page of its jobs."""
        params = {name: value for name, value in (("limit", limit), ("cursor", cursor)) if value}
        return _json(self._request("GET", f"/v1/batches/{batch_id}", params=params))

    def get_batch_with_all_jobs(self, batch_id: str) -> dict[str, Any]:
        """Return the batch with every one of its jobs, following next_cursor page by page."""
        batch = self.get_batch(batch_id)
        jobs = list(batch.get("jobs", []))
        cursor = batch.get("next_cursor")
        while cursor:
            page = self.get_batch(batch_id, cursor=cursor)
            jobs.extend(page.get("jobs", []))
            cursor = page.get("next_cursor")
        return {**batch, "jobs": jobs, "next_cursor": None}

    def cancel_batch(self, batch_id: str) -> dict[str, Any]:
        """Cancel the batch's queued and running jobs; return the batch."""
        return _json(self._request("DELETE", f"/v1/batches/{batch_id}"))

    def wait_batch(
        self,
        batch_id: str,
        timeout_s: float = 3600.0,
        *,
        progress: bool = True,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> dict[str, Any]:
        """Poll the batch until every job has ended and return it.

        With `progress`, a tqdm bar on stderr counts finished jobs out of jobs_total. Raises
        ClientError wait_timed_out when jobs are still going after timeout_s.
        """
        deadline = time.monotonic() + timeout_s
        bar = None
        try:
            while True:
                batch = self.get_batch(batch_id, limit=1)
                finished = sum(batch["counts"].get(status, 0) for status in FINAL_STATUSES)
                if progress and bar is None:
                    bar = _batch_bar(batch_id, batch["jobs_total"])
                if bar is not None:
                    bar.n = finished
                    bar.set_postfix_str(batch["status"], refresh=False)
                    bar.refresh()
                if batch["status"] != "running":
                    return self.get_batch_with_all_jobs(batch_id)
                if time.monotonic() >= deadline:
                    message = (
                        f"batch {batch_id} has {finished} of {batch['jobs_total']} jobs finished "
                        f"after {timeout_s:g} s; check it later with `ocrq batch status`"
                    )
                    raise ClientError("wait_timed_out", message)
                time.sleep(poll_interval_s)
        finally:
            if bar is not None:
                bar.close()

    def _submit_json(self, body: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        body = {name: value for name, value in body.items() if value is not None}
        return _json(self._request("POST", "/v1/jobs", json=body, headers=headers))

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


def _batch_bar(batch_id: str, jobs_total: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=jobs_total, desc=f"batch {batch_id[:8]}", unit="job", leave=False)


def _update_bar(bar: Any, job: dict[str, Any]) -> None:
    total = job.get("pages_total")
    if total is not None and bar.total != total:
        bar.total = total
    bar.n = job.get("pages_done") or 0
    bar.set_postfix_str(job["status"], refresh=False)
    bar.refresh()

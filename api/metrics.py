"""Prometheus metrics in the text exposition format (version 0.0.4), written without a client
library: request counters kept in this process, job counts read from the database per scrape.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping

from core.states import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class RequestMetrics:
    """HTTP request counts and durations by method, route template and status, for one process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._duration_s: dict[tuple[str, str], float] = {}

    def record(self, method: str, route: str, status: int, duration_s: float) -> None:
        """Count one finished request."""
        with self._lock:
            self._counts[(method, route, status)] += 1
            key = (method, route)
            self._duration_s[key] = self._duration_s.get(key, 0.0) + duration_s

    def render(self) -> list[str]:
        """Return the exposition lines for the request metrics."""
        with self._lock:
            counts = sorted(self._counts.items())
            durations = sorted(self._duration_s.items())
        totals: Counter[tuple[str, str]] = Counter()
        for (method, route, _), count in counts:
            totals[(method, route)] += count

        lines = [
            "# HELP ocrq_http_requests_total HTTP requests served, by method, route and status.",
            "# TYPE ocrq_http_requests_total counter",
        ]
        for (method, route, status), count in counts:
            labels = _labels(method=method, route=route, status=str(status))
            lines.append(f"ocrq_http_requests_total{{{labels}}} {count}")

        lines += [
            "# HELP ocrq_http_request_duration_seconds Time spent serving HTTP requests.",
            "# TYPE ocrq_http_request_duration_seconds summary",
        ]
        for (method, route), total_s in durations:
            labels = _labels(method=method, route=route)
            lines.append(f"ocrq_http_request_duration_seconds_sum{{{labels}}} {total_s:.6f}")
            lines.append(
                f"ocrq_http_request_duration_seconds_count{{{labels}}} {totals[(method, route)]}"
            )
        return lines


def render_job_counts(counts: Mapping[str, int]) -> list[str]:
    """Return the exposition lines for job counts; every status appears, zero when absent."""
    lines = [
        "# HELP ocrq_jobs Jobs in the database, by status.",
        "# TYPE ocrq_jobs gauge",
    ]
    for status in JobStatus:
        lines.append(f"ocrq_jobs{{{_labels(status=status.value)}}} {counts.get(status.value, 0)}")
    return lines


def render(job_counts: Mapping[str, int] | None, requests: RequestMetrics) -> str:
    """Return the whole exposition text; job counts are left out when the database is down."""
    lines = []
    if job_counts is not None:
        lines += render_job_counts(job_counts)
    lines += [
        "# HELP ocrq_database_up Whether the last scrape could read job counts (1) or not (0).",
        "# TYPE ocrq_database_up gauge",
        f"ocrq_database_up {0 if job_counts is None else 1}",
    ]
    lines += requests.render()
    return "\n".join(lines) + "\n"


def _labels(**values: str) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in values.items())


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

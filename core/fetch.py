"""Download a client-supplied URL to a local file, guarded against SSRF and oversized input.

Every hop (the first URL and each redirect) goes through core.ssrf.check_url, and the connection is
made to the address that check resolved: the request URL carries that IP, the Host header and the
TLS server name carry the original host. A DNS answer that changes between the check and the
connection (DNS rebinding) therefore cannot move the request to another address.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import structlog

from core.errors import InputError, TransientError
from core.ssrf import ResolvedTarget, Resolver, check_url

MAX_REDIRECTS = 5
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses worth another attempt later; every other non-2xx status fails the input for good.
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "ocrq-fetch/0.1"
MAX_FILE_SETTING = "OCRQ_MAX_FILE_BYTES"

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class FetchedFile:
    """A downloaded file with the metadata of the response that delivered it."""

    path: Path
    size: int  # bytes written, after any content decoding
    content_type: str | None  # media type without parameters, lower-case
    final_url: str  # the URL after redirects, with the host name rather than the pinned IP
    sha256: str  # hex digest of the bytes written


def fetch_url(
    url: str,
    dest_path: str | os.PathLike[str],
    max_bytes: int,
    timeout_s: float,
    allow: Sequence[str] | None = None,
    *,
    resolve: Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> FetchedFile:
    """Download url to dest_path, following up to MAX_REDIRECTS redirects, each one re-checked.

    Raises InputError "invalid_url" or "url_not_allowed" (core.ssrf), "file_too_large" (413) past
    max_bytes, "url_fetch_failed" for a final non-2xx status or too many redirects, and
    TransientError "url_fetch_timeout" past timeout_s or "url_fetch_failed" for network errors and
    statuses in TRANSIENT_STATUSES. dest_path is replaced only by a complete download.
    `resolve` replaces getaddrinfo, and ssl_context replaces httpx's default certificate checks.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    dest = Path(dest_path)
    current_url = url

    for redirects in range(MAX_REDIRECTS + 1):
        target = check_url(current_url, allow, resolve=resolve)
        # A fresh client per hop, because pooled connections are keyed by IP and one opened for
        # another host name must not be reused. trust_env=False ignores proxy variables, since a
        # proxy would connect to the host by name.
        with httpx.Client(
            trust_env=False, follow_redirects=False, verify=ssl_context or True
        ) as client:
            response = _send_pinned(client, target, deadline, timeout_s)
            try:
                if response.status_code in REDIRECT_STATUSES:
                    current_url = _redirect_location(current_url, response)
                    continue
                _raise_for_status(target, response)
                fetched = _save_body(response, dest, max_bytes, deadline, timeout_s, current_url)
            finally:
                response.close()

        duration_ms = int((time.monotonic() - started) * 1000)
        log.info(
            "url.fetched",
            host=target.host,
            redirects=redirects,
            bytes=fetched.size,
            duration_ms=duration_ms,
        )
        return fetched

    message = f"URL {_describe(url)} redirected more than {MAX_REDIRECTS} times"
    raise InputError(message, code="url_fetch_failed")


def _send_pinned(
    client: httpx.Client, target: ResolvedTarget, deadline: float, timeout_s: float
) -> httpx.Response:
    """Send GET to the checked addresses in turn and return the first streamed response."""
    try:
        original = httpx.URL(target.url)
    except httpx.InvalidURL as exc:
        message = f"URL {_describe(target.url)} is not valid: {exc}"
        raise InputError(message, code="invalid_url") from exc
    headers = {
        # netloc is the IDNA-encoded host with any explicit port, as the Host header needs.
        "Host": original.netloc.decode("ascii"),
        "User-Agent": USER_AGENT,
        "Accept-Encoding": "identity",
    }
    extensions = {"sni_hostname": original.raw_host.decode("ascii")}

    last_error: httpx.TransportError | None = None
    for address in target.addresses:
        remaining_s = _remaining_s(deadline, timeout_s, target)
        # NOTE: httpx applies the read timeout per read, so a server that stalls mid-body can hold
        # the download up to remaining_s past the last chunk, at most twice timeout_s in total.
        # Name resolution in check_url is bounded by the resolver's own timeout, not by this one.
        pinned_url = original.copy_with(host=address.split("%", 1)[0])
        request = client.build_request(
            "GET", pinned_url, headers=headers, timeout=remaining_s, extensions=extensions
        )
        try:
            return client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            message = f"fetching URL {_describe(target.url)} timed out after {timeout_s:g} s"
            raise TransientError(message, code="url_fetch_timeout") from exc
        except httpx.ConnectError as exc:
            last_error = exc  # try the next resolved address
        except httpx.TransportError as exc:
            message = f"fetching URL {_describe(target.url)} failed: {exc}"
            raise TransientError(message, code="url_fetch_failed") from exc

    message = f"could not connect to URL {_describe(target.url)}: {last_error}"
    raise TransientError(message, code="url_fetch_failed") from last_error


def _redirect_location(current_url: str, response: httpx.Response) -> str:
    location = response.headers.get("location")
    if not location:
        message = (
            f"URL {_describe(current_url)} returned HTTP {response.status_code} without a Location"
        )
        raise InputError(message, code="url_fetch_failed")
    try:
        return str(httpx.URL(current_url).join(location))
    except httpx.InvalidURL as exc:
        message = f"URL {_describe(current_url)} redirected to an invalid Location: {exc}"
        raise InputError(message, code="invalid_url") from exc


def _raise_for_status(target: ResolvedTarget, response: httpx.Response) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    message = f"fetching URL {_describe(target.url)} returned HTTP {status}; expected 2xx"
    if status in TRANSIENT_STATUSES:
        raise TransientError(message, code="url_fetch_failed")
    raise InputError(message, code="url_fetch_failed")


def _save_body(
    response: httpx.Response,
    dest: Path,
    max_bytes: int,
    deadline: float,
    timeout_s: float,
    final_url: str,
) -> FetchedFile:
    """Stream the body to a partial file within the byte and time limits, then move it to dest."""
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(int(declared), max_bytes)

    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        with partial.open("wb") as handle:
            # iter_bytes yields decoded bytes, so a compressed body cannot expand past max_bytes.
            # Without a chunk size it yields each piece as it arrives, so the deadline is checked
            # while a slow body trickles in instead of once per buffered chunk.
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(size, max_bytes)
                _remaining_s(deadline, timeout_s, None)
                digest.update(chunk)
                handle.write(chunk)
        os.replace(partial, dest)
    except httpx.TimeoutException as exc:
        partial.unlink(missing_ok=True)
        message = f"fetching URL {_describe(final_url)} timed out after {timeout_s:g} s"
        raise TransientError(message, code="url_fetch_timeout") from exc
    except httpx.TransportError as exc:
        partial.unlink(missing_ok=True)
        message = f"fetching URL {_describe(final_url)} failed while reading the body: {exc}"
        raise TransientError(message, code="url_fetch_failed") from exc
    except BaseException:
        partial.unlink(missing_ok=True)
        raise

    content_type = response.headers.get("content-type")
    media_type = content_type.split(";", 1)[0].strip().lower() if content_type else None
    return FetchedFile(dest, size, media_type or None, final_url, digest.hexdigest())


def _remaining_s(deadline: float, timeout_s: float, target: ResolvedTarget | None) -> float:
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        where = f" {_describe(target.url)}" if target is not None else ""
        message = f"fetching URL{where} timed out after {timeout_s:g} s"
        raise TransientError(message, code="url_fetch_timeout")
    return remaining_s


def _too_large(size: int, max_bytes: int) -> InputError:
    message = (
        f"URL file is larger than {max_bytes} bytes (got at least {size}); "
        f"the limit is {MAX_FILE_SETTING}"
    )
    return InputError(message, code="file_too_large", http_status=413)


def _describe(url: str) -> str:
    """Return the URL without user info, query or fragment, which may carry credentials."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "(invalid URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

"""Tests for core.fetch against an HTTP server on 127.0.0.1 that the tests start themselves."""

from __future__ import annotations

import gzip
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.errors import InputError, TransientError
from core.fetch import MAX_REDIRECTS, FetchedFile, fetch_url

ALLOW = ("127.0.0.1",)
DOCUMENT = b"%PDF-1.7 test document " * 100


class _Handler(BaseHTTPRequestHandler):
    """Routes: /doc.pdf, /redirect/N, /redirect-to?url=U, /status/N, /big, /endless, /gzip-bomb,
    /stall, /drip and /host (echoes the Host header)."""

    def do_GET(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        parts = urlsplit(self.path)
        route = parts.path
        try:
            if route == "/doc.pdf":
                self._send(200, DOCUMENT, {"Content-Type": "Application/PDF; charset=binary"})
            elif route.startswith("/redirect/"):
                remaining = int(route.rsplit("/", 1)[1])
                target = "/doc.pdf" if remaining <= 1 else f"/redirect/{remaining - 1}"
                self._send(302, b"", {"Location": target})
            elif route == "/redirect-to":
                self._send(301, b"", {"Location": parse_qs(parts.query)["url"][0]})
            elif route == "/redirect-without-location":
                self._send(302, b"", {})
            elif route.startswith("/status/"):
                self._send(int(route.rsplit("/", 1)[1]), b"no", {})
            elif route == "/big":
                self._send(200, b"x" * 5000, {})
            elif route == "/endless":
                self._send_unsized(b"y" * 1024 for _ in range(1000))
            elif route == "/gzip-bomb":
                body = gzip.compress(b"\0" * 1_000_000)
                self._send(200, body, {"Content-Encoding": "gzip"})
            elif route == "/stall":
                self._send_unsized(self._stall())
            elif route == "/drip":
                self._send_unsized(self._drip())
            elif route == "/host":
                self._send(200, self.headers["Host"].encode(), {"Content-Type": "text/plain"})
            else:
                self._send(404, b"unknown route", {})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as the limit tests expect

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_unsized(self, chunks: Iterator[bytes]) -> None:
        # HTTP/1.0 without Content-Length: the body ends when the server closes the connection.
        self.send_response(200)
        self.end_headers()
        for chunk in chunks:
            self.wfile.write(chunk)
            self.wfile.flush()

    @staticmethod
    def _stall() -> Iterator[bytes]:
        yield b"start"
        time.sleep(3)
        yield b"late"

    @staticmethod
    def _drip() -> Iterator[bytes]:
        for _ in range(40):
            time.sleep(0.05)
            yield b"d"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def fetch(
    url: str,
    dest: Path,
    max_bytes: int = 1_000_000,
    timeout_s: float = 5.0,
    allow: Sequence[str] | None = ALLOW,
    **options: Any,
) -> FetchedFile:
    return fetch_url(url, dest, max_bytes, timeout_s, allow, **options)


def test_fetch_url_downloads_document(server_url: str, tmp_path: Path) -> None:
    dest = tmp_path / "input"

    fetched = fetch(f"{server_url}/doc.pdf", dest)

    assert dest.read_bytes() == DOCUMENT
    assert fetched.path == dest
    assert fetched.size == len(DOCUMENT)
    assert fetched.sha256 == hashlib.sha256(DOCUMENT).hexdigest()
    assert fetched.content_type == "application/pdf"
    assert fetched.final_url == f"{server_url}/doc.pdf"
    assert not (tmp_path / "input.part").exists()


def test_fetch_url_follows_redirect_chain_up_to_limit(server_url: str, tmp_path: Path) -> None:
    fetched = fetch(f"{server_url}/redirect/{MAX_REDIRECTS}", tmp_path / "input")

    assert fetched.size == len(DOCUMENT)
    assert fetched.final_url == f"{server_url}/doc.pdf"


def test_fetch_url_rejects_redirect_chain_over_limit(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="redirected more than 5 times") as caught:
        fetch(f"{server_url}/redirect/{MAX_REDIRECTS + 1}", tmp_path / "input")

    assert caught.value.code == "url_fetch_failed"
    assert not (tmp_path / "input").exists()


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/internal",
        "http://[::1]/x",
        "http://localhost/x",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_fetch_url_rejects_redirect_to_disallowed_address(
    server_url: str, tmp_path: Path, location: str
) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/redirect-to?url={location}", tmp_path / "input")

    assert caught.value.code == "url_not_allowed"


def test_fetch_url_rejects_redirect_to_other_scheme(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/redirect-to?url=file:///etc/passwd", tmp_path / "input")

    assert caught.value.code == "invalid_url"


def test_fetch_url_rejects_redirect_without_location(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="without a Location"):
        fetch(f"{server_url}/redirect-without-location", tmp_path / "input")


def test_fetch_url_rejects_server_without_allowlist(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/doc.pdf", tmp_path / "input", allow=None)

    assert caught.value.code == "url_not_allowed"


def test_fetch_url_rejects_declared_size_over_limit(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/big", tmp_path / "input", max_bytes=4999)

    assert caught.value.code == "file_too_large"
    assert caught.value.http_status == 413
    assert "OCRQ_MAX_FILE_BYTES" in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_fetch_url_accepts_size_at_limit(server_url: str, tmp_path: Path) -> None:
    assert fetch(f"{server_url}/big", tmp_path / "input", max_bytes=5000).size == 5000


def test_fetch_url_stops_unsized_body_at_limit(server_url: str, tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/endless", tmp_path / "input", max_bytes=100_000)

    assert caught.value.code == "file_too_large"
    assert list(tmp_path.iterdir()) == []


def test_fetch_url_counts_decoded_bytes(server_url: str, tmp_path: Path) -> None:
    """A small gzip body that inflates past the limit is rejected."""
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/gzip-bomb", tmp_path / "input", max_bytes=100_000)

    assert caught.value.code == "file_too_large"


def test_fetch_url_keeps_existing_file_on_failure(server_url: str, tmp_path: Path) -> None:
    dest = tmp_path / "input"
    dest.write_bytes(b"previous")

    with pytest.raises(InputError):
        fetch(f"{server_url}/endless", dest, max_bytes=10_000)

    assert dest.read_bytes() == b"previous"


def test_fetch_url_times_out_on_stalled_body(server_url: str, tmp_path: Path) -> None:
    started = time.monotonic()

    with pytest.raises(TransientError) as caught:
        fetch(f"{server_url}/stall", tmp_path / "input", timeout_s=0.5)

    assert caught.value.code == "url_fetch_timeout"
    assert time.monotonic() - started < 2.5
    assert list(tmp_path.iterdir()) == []


def test_fetch_url_enforces_total_time_on_slow_body(server_url: str, tmp_path: Path) -> None:
    """Each byte arrives within the read timeout, but the whole body takes too long."""
    started = time.monotonic()

    with pytest.raises(TransientError) as caught:
        fetch(f"{server_url}/drip", tmp_path / "input", timeout_s=0.5)

    assert caught.value.code == "url_fetch_timeout"
    assert time.monotonic() - started < 1.8


@pytest.mark.parametrize("status", [400, 403, 404, 410])
def test_fetch_url_rejects_client_error_status(
    server_url: str, tmp_path: Path, status: int
) -> None:
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/status/{status}", tmp_path / "input")

    assert caught.value.code == "url_fetch_failed"
    assert f"HTTP {status}" in caught.value.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fetch_url_retries_server_error_status(
    server_url: str, tmp_path: Path, status: int
) -> None:
    with pytest.raises(TransientError) as caught:
        fetch(f"{server_url}/status/{status}", tmp_path / "input")

    assert caught.value.code == "url_fetch_failed"
    assert f"HTTP {status}" in caught.value.message


def test_fetch_url_omits_query_from_errors(server_url: str, tmp_path: Path) -> None:
    """Presigned URLs carry credentials in the query string, which must not reach messages."""
    with pytest.raises(InputError) as caught:
        fetch(f"{server_url}/status/404?X-Amz-Signature=secret", tmp_path / "input")

    assert "secret" not in caught.value.message
    assert "/status/404" in caught.value.message


def test_fetch_url_reports_refused_connection_as_transient(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    with pytest.raises(TransientError) as caught:
        fetch(f"http://127.0.0.1:{port}/doc.pdf", tmp_path / "input")

    assert caught.value.code == "url_fetch_failed"


def make_rebinding_resolver(calls: list[str]) -> Callable[[str, int], list[str]]:
    """Return a resolver that returns 127.0.0.1 once, then a blocked address."""

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"] if len(calls) == 1 else ["10.255.255.1"]

    return resolve


def test_fetch_url_connects_to_checked_address(server_url: str, tmp_path: Path) -> None:
    """The connection goes to the address check_url approved; the name is not resolved again."""
    port = urlsplit(server_url).port
    calls: list[str] = []

    fetched = fetch(
        f"http://files.invalid:{port}/host",
        tmp_path / "input",
        resolve=make_rebinding_resolver(calls),
    )

    assert calls == ["files.invalid"]
    assert (tmp_path / "input").read_bytes() == f"files.invalid:{port}".encode()
    assert fetched.final_url == f"http://files.invalid:{port}/host"


def make_tls_files(tmp_path: Path, host_name: str) -> tuple[Path, Path]:
    """Write a self-signed certificate for host_name and its key; return (cert, key) paths."""
    pytest.importorskip("cryptography")
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = tmp_path / "cert.pem"
    key_path = tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, ssl.SSLContext]]:
    """Serve the routes over TLS on 127.0.0.1 with a certificate for files.invalid only."""
    cert_path, key_path = make_tls_files(tmp_path, "files.invalid")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    client_context = ssl.create_default_context(cafile=str(cert_path))
    yield server.server_address[1], client_context
    server.shutdown()
    server.server_close()


def test_fetch_url_verifies_tls_against_host_name(
    tls_server: tuple[int, ssl.SSLContext], tmp_path: Path
) -> None:
    """The certificate names files.invalid, not 127.0.0.1, so this passes only if SNI and the
    hostname check use the URL's host while the connection goes to the pinned IP."""
    port, client_context = tls_server
    dest = tmp_path / "input"

    fetch(
        f"https://files.invalid:{port}/host",
        dest,
        resolve=lambda host, port: ["127.0.0.1"],
        ssl_context=client_context,
    )

    assert dest.read_bytes() == f"files.invalid:{port}".encode()


def test_fetch_url_rejects_certificate_for_other_host(
    tls_server: tuple[int, ssl.SSLContext], tmp_path: Path
) -> None:
    port, client_context = tls_server

    with pytest.raises(TransientError, match="certificate"):
        fetch(
            f"https://other.invalid:{port}/host",
            tmp_path / "input",
            resolve=lambda host, port: ["127.0.0.1"],
            ssl_context=client_context,
        )

"""Tests for core.ssrf: which URLs may be fetched, using literal IPs and fake resolvers only."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest

from core.errors import ConfigError, InputError, TransientError
from core.ssrf import blocked_reason, check_url, parse_allowlist

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"


def make_resolver(*addresses: str) -> Callable[[str, int], list[str]]:
    """Return a resolver that maps every host to the given addresses, without DNS."""

    def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def failing_resolver(errno: int) -> Callable[[str, int], list[str]]:
    def resolve(host: str, port: int) -> list[str]:
        raise socket.gaierror(errno, "resolver failure")

    return resolve


BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local"),
    ("169.254.1.1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "private"),
    ("fd12:3456:789a::1", "private"),
    ("fe80::1", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("::ffff:127.0.0.1", "loopback (IPv4 inside IPv6)"),
    ("::ffff:10.0.0.1", "private (IPv4 inside IPv6)"),
    ("::ffff:169.254.169.254", "link-local (IPv4 inside IPv6)"),
    ("::ffff:100.64.0.1", "carrier-grade NAT (IPv4 inside IPv6)"),
    ("64:ff9b::a9fe:a9fe", "link-local (IPv4 inside IPv6)"),
    ("2002:7f00:1::", "loopback (IPv4 inside IPv6)"),
    ("2001::1", "reserved"),
    ("::127.0.0.1", "reserved"),
]


@pytest.mark.parametrize(("address", "label"), BLOCKED)
def test_blocked_reason_names_address_class(address: str, label: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) == label


@pytest.mark.parametrize(
    "address", [PUBLIC_V4, "8.8.8.8", "1.1.1.1", PUBLIC_V6, "::ffff:8.8.8.8", "64:ff9b::808:808"]
)
def test_blocked_reason_passes_public_address(address: str) -> None:
    assert blocked_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "label"), BLOCKED)
def test_check_url_rejects_literal_blocked_address(address: str, label: str) -> None:
    host = f"[{address}]" if ":" in address else address

    with pytest.raises(InputError) as caught:
        check_url(f"http://{host}/doc.pdf")

    assert caught.value.code == "url_not_allowed"
    assert "OCRQ_URL_ALLOWLIST" in caught.value.message
    assert label in caught.value.message


@pytest.mark.parametrize(("address", "label"), BLOCKED)
def test_check_url_rejects_name_resolving_to_blocked_address(address: str, label: str) -> None:
    with pytest.raises(InputError) as caught:
        check_url("https://files.example.com/a.pdf", resolve=make_resolver(address))

    assert caught.value.code == "url_not_allowed"


def test_check_url_rejects_any_blocked_address() -> None:
    resolve = make_resolver(PUBLIC_V4, "10.0.0.5")

    with pytest.raises(InputError, match="10.0.0.5"):
        check_url("https://files.example.com/a.pdf", resolve=resolve)


def test_check_url_rejects_localhost_by_name() -> None:
    with pytest.raises(InputError) as caught:
        check_url("http://localhost:8000/")

    assert caught.value.code == "url_not_allowed"


@pytest.mark.parametrize(
    "host",
    [
        "metadata.google.internal",
        "METADATA.google.internal.",
        "metadata",
        "db.internal",
        "printer.local",
        "app.localhost",
        "router.home.arpa",
    ],
)
def test_check_url_rejects_internal_names_before_resolving(host: str) -> None:
    resolve = make_resolver(PUBLIC_V4)

    with pytest.raises(InputError, match="internal name"):
        check_url(f"http://{host}/computeMetadata/v1/", resolve=resolve)


def test_check_url_returns_resolved_public_addresses() -> None:
    resolve = make_resolver(PUBLIC_V4, PUBLIC_V6, PUBLIC_V4)

    target = check_url("https://Files.Example.com:8443/a.pdf?x=1", resolve=resolve)

    assert target.scheme == "https"
    assert target.host == "files.example.com"
    assert target.port == 8443
    assert target.addresses == (PUBLIC_V4, PUBLIC_V6)
    assert target.url == "https://Files.Example.com:8443/a.pdf?x=1"


@pytest.mark.parametrize(("url", "port"), [("http://8.8.8.8/", 80), ("https://8.8.8.8/", 443)])
def test_check_url_uses_default_port(url: str, port: int) -> None:
    assert check_url(url).port == port


def test_check_url_accepts_public_ipv6_literal_without_resolving() -> None:
    target = check_url(f"http://[{PUBLIC_V6}]/a", resolve=failing_resolver(socket.EAI_NONAME))

    assert target.addresses == (PUBLIC_V6,)


def test_check_url_resolves_shorthand_ipv4_forms_before_checking() -> None:
    """getaddrinfo reads "127.1" and "2130706433" as 127.0.0.1, so they must be rejected too."""
    for host in ["127.1", "2130706433", "0x7f.0.0.1"]:
        with pytest.raises(InputError, match="loopback"):
            check_url(f"http://{host}/")


@pytest.mark.parametrize(
    "allow",
    [
        ["files.internal.example"],
        ["FILES.internal.example."],
        ["10.0.0.5"],
        ["10.0.0.0/8"],
        ["10.0.0.7/8"],
    ],
)
def test_check_url_allowlist_lifts_block(allow: list[str]) -> None:
    resolve = make_resolver("10.0.0.5")

    target = check_url("http://files.internal.example/a.pdf", allow, resolve=resolve)

    assert target.addresses == ("10.0.0.5",)


def test_check_url_allowlisted_host_skips_name_block() -> None:
    target = check_url("http://localhost:9000/a", ["localhost"], resolve=make_resolver("127.0.0.1"))

    assert target.addresses == ("127.0.0.1",)


def test_check_url_allowlist_host_is_exact() -> None:
    resolve = make_resolver("10.0.0.5")

    with pytest.raises(InputError, match="private"):
        check_url("http://other.example/a.pdf", ["files.internal.example"], resolve=resolve)


def test_check_url_allowlist_cidr_is_exact() -> None:
    with pytest.raises(InputError, match="private"):
        check_url("http://192.168.1.1/", ["10.0.0.0/8"])


def test_check_url_allowlist_must_cover_every_address() -> None:
    resolve = make_resolver("10.0.0.5", "192.168.0.5")

    with pytest.raises(InputError, match="192.168.0.5"):
        check_url("http://files.example/", ["10.0.0.0/8"], resolve=resolve)


def test_check_url_allowlist_ipv4_cidr_covers_mapped_ipv6() -> None:
    target = check_url("http://[::ffff:10.0.0.5]/", ["10.0.0.0/8"])

    assert target.addresses == ("::ffff:a00:5",)


def test_check_url_allowlist_ipv6_cidr() -> None:
    target = check_url("http://[fd00::5]/", ["fd00::/64"])

    assert target.addresses == ("fd00::5",)


def test_check_url_rejects_invalid_allowlist_cidr() -> None:
    with pytest.raises(ConfigError, match="OCRQ_URL_ALLOWLIST"):
        check_url("http://8.8.8.8/", ["10.0.0.0/33"])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://8.8.8.8/a",
        "file:///etc/passwd",
        "gopher://8.8.8.8/",
        "8.8.8.8/a",
        "http:///a",
        "http://user:pass@8.8.8.8/",
        "http://8.8.8.8:99999/",
        "http://[::1/",
    ],
)
def test_check_url_rejects_invalid_url(url: str) -> None:
    with pytest.raises(InputError) as caught:
        check_url(url)

    assert caught.value.code == "invalid_url"


def test_check_url_keeps_query_out_of_messages() -> None:
    """Presigned URLs carry credentials in the query string."""
    with pytest.raises(InputError) as caught:
        check_url("http://10.0.0.1/a.pdf?X-Amz-Signature=secret")
    with pytest.raises(InputError) as invalid:
        check_url("http://8.8.8.8:99999/a.pdf?X-Amz-Signature=secret")

    assert "secret" not in caught.value.message
    assert "secret" not in invalid.value.message


def test_check_url_treats_unknown_host_as_input_error() -> None:
    with pytest.raises(InputError) as caught:
        check_url("http://nowhere.example/", resolve=failing_resolver(socket.EAI_NONAME))

    assert caught.value.code == "url_fetch_failed"


def test_check_url_treats_temporary_dns_failure_as_transient() -> None:
    with pytest.raises(TransientError):
        check_url("http://files.example/", resolve=failing_resolver(socket.EAI_AGAIN))


def test_check_url_rejects_empty_resolution() -> None:
    with pytest.raises(InputError, match="no addresses"):
        check_url("http://files.example/", resolve=make_resolver())


def test_parse_allowlist_splits_commas() -> None:
    assert parse_allowlist(" s3.internal , 10.0.0.0/8,,") == ["s3.internal", "10.0.0.0/8"]


@pytest.mark.parametrize("url", ["http://a..b/doc.pdf", f"http://{'a' * 70}.example/doc.pdf"])
def test_check_url_rejects_host_names_idna_cannot_encode(url: str) -> None:
    # The real resolver encodes the name before any lookup, so nothing leaves the machine.
    with pytest.raises(InputError) as caught:
        check_url(url)
    assert caught.value.code == "invalid_url"


@pytest.mark.parametrize("url", ["http://[::1", "http://[::1/doc.pdf", "http://host:99999/"])
def test_check_url_rejects_malformed_url(url: str) -> None:
    with pytest.raises(InputError) as caught:
        check_url(url)
    assert caught.value.code == "invalid_url"

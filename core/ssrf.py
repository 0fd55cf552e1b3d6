"""Server-side request forgery guard for URLs that clients ask the service to fetch.

check_url resolves the host once and rejects it when any address is not publicly routable
(loopback, private, link-local with the cloud metadata address, multicast, reserved and so on) or
when the host name is a known internal name. Entries of OCRQ_URL_ALLOWLIST (host names, IPs or
CIDRs) lift the block, for example for an S3 server on the private network.

The checked addresses are returned, and the caller must connect to one of them instead of resolving
the name again. Otherwise a DNS server could return a public address for the check and a private one
for the connection (DNS rebinding). core/fetch.py connects this way.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import ConfigError, InputError, TransientError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Returns the IP addresses (as text) that a host name resolves to, for a TCP connection to port.
Resolver = Callable[[str, int], list[str]]

ALLOWLIST_SETTING = "OCRQ_URL_ALLOWLIST"
ALLOWED_SCHEMES = frozenset({"http", "https"})
DEFAULT_PORTS = {"http": 80, "https": 443}

# Names of cloud metadata services and names reserved for local or private use (RFC 6761, the
# .internal top-level domain, mDNS .local, home.arpa). Blocked by name even before resolution.
BLOCKED_HOSTS = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "instance-data", "metadata.azure.com"}
)
BLOCKED_HOST_SUFFIXES = (".localhost", ".internal", ".local", ".home.arpa")


def _networks(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), label) for cidr, label in rows)


# First match wins. IPv4-mapped, NAT64 and 6to4 IPv6 addresses are checked through the IPv4
# address they carry before these IPv6 rows are consulted.
BLOCKED_IPV4 = _networks(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.0.0.0/24", "reserved"),
    ("192.0.2.0/24", "documentation"),
    ("192.88.99.0/24", "reserved"),
    ("192.168.0.0/16", "private"),
    ("198.18.0.0/15", "benchmarking"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
)
BLOCKED_IPV6 = _networks(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("::/8", "reserved"),
    ("64:ff9b:1::/48", "private"),
    ("100::/64", "reserved"),
    ("2001::/23", "reserved"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "private"),
    ("ff00::/8", "multicast"),
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class ResolvedTarget:
    """A URL that passed the check, with the addresses the connection must use."""

    url: str
    scheme: str
    host: str  # lower-case, without brackets or a trailing dot
    port: int
    addresses: tuple[str, ...]  # in resolver order; connect to these, never re-resolve host


def check_url(
    url: str, allow: Sequence[str] | None = None, *, resolve: Resolver | None = None
) -> ResolvedTarget:
    """Check that url may be fetched and return its resolved addresses.

    Raises InputError "invalid_url" for a malformed URL or a scheme other than http or https, and
    InputError "url_not_allowed" for a blocked host or address. A host named in allow (or resolving
    only to addresses inside allowed IPs or CIDRs) is accepted. `resolve` replaces getaddrinfo.
    """
    scheme, host, port = _split_url(url)
    allowlist = _AllowList.parse(allow or [])
    host_allowed = host in allowlist.hosts

    if not host_allowed and _is_blocked_name(host):
        message = (
            f"URL host {host!r} is an internal name; add it to {ALLOWLIST_SETTING} to fetch it"
        )
        raise InputError(message, code="url_not_allowed")

    addresses = _resolve_host(host, port, resolve or _getaddrinfo)
    if not host_allowed:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            label = blocked_reason(address)
            if label is not None and not allowlist.contains(address):
                message = (
                    f"URL host {host!r} resolves to {label} address {text}; "
                    f"add the host, address or its network to {ALLOWLIST_SETTING} to fetch it"
                )
                raise InputError(message, code="url_not_allowed")

    return ResolvedTarget(url=url, scheme=scheme, host=host, port=port, addresses=addresses)


def blocked_reason(address: IPAddress) -> str | None:
    """Return why an address is not publicly routable ("loopback", "private", ...), or None."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            label = blocked_reason(embedded)
            return None if label is None else f"{label} (IPv4 inside IPv6)"
        rows = BLOCKED_IPV6
    else:
        rows = BLOCKED_IPV4

    for network, label in rows:
        if address in network:
            return label
    # Catch ranges the tables miss (new registry entries known to this Python's ipaddress).
    if not address.is_global:
        return "reserved"
    return None


def parse_allowlist(value: str) -> list[str]:
    """Split a comma-separated OCRQ_URL_ALLOWLIST value into entries, dropping blanks."""
    return [entry.strip() for entry in value.split(",") if entry.strip()]


@dataclass(frozen=True)
class _AllowList:
    hosts: frozenset[str]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Sequence[str]) -> _AllowList:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip().lower().rstrip(".")
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                if "/" in text:
                    message = f"{ALLOWLIST_SETTING} entry {entry!r} is not a valid CIDR"
                    raise ConfigError(message) from None
                hosts.add(text.strip("[]"))
        return cls(frozenset(hosts), tuple(networks))

    def contains(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )


def _split_url(url: str) -> tuple[str, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        # The URL itself stays out of messages: presigned URLs carry credentials.
        message = f"URL is not valid: {exc}"
        raise InputError(message, code="invalid_url") from exc

    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        message = f"URL scheme must be http or https, got {scheme or 'none'!r}"
        raise InputError(message, code="invalid_url")
    if parts.username is not None or parts.password is not None:
        message = "URL must not contain a user name or password"
        raise InputError(message, code="invalid_url")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        message = "URL has no host"
        raise InputError(message, code="invalid_url")
    return scheme, host, port if port is not None else DEFAULT_PORTS[scheme]


def _is_blocked_name(host: str) -> bool:
    return host in BLOCKED_HOSTS or host.endswith(BLOCKED_HOST_SUFFIXES)


def _resolve_host(host: str, port: int, resolve: Resolver) -> tuple[str, ...]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        return (str(literal),)

    try:
        found = resolve(host, port)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            message = f"resolving URL host {host!r} failed temporarily: {exc.strerror}"
            raise TransientError(message, code="url_fetch_failed") from exc
        message = f"URL host {host!r} could not be resolved: {exc.strerror}"
        raise InputError(message, code="url_fetch_failed") from exc
    except UnicodeError as exc:
        # getaddrinfo encodes the name with IDNA, which refuses empty or over-long labels (a..b).
        message = f"URL host {host[:253]!r} is not a valid host name: {exc}"
        raise InputError(message, code="invalid_url") from exc
    if not found:
        message = f"URL host {host!r} resolved to no addresses"
        raise InputError(message, code="url_fetch_failed")
    return tuple(dict.fromkeys(found))


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.sixtofour

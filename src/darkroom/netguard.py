"""The outbound URL guard (SSRF): which URLs darkroom may call, and an HTTP client that obeys it.

darkroom calls URLs its clients give it: webhook receivers and ``input_image`` URLs. Left
alone, a client could point those at the server's own network (a database admin page on
10.0.0.5, the cloud metadata service at 169.254.169.254) and read or poke at it.

Policy (``NetGuard``):

- Only ``http`` and ``https``.
- Every address the host resolves to must be public. Refused: loopback, private (RFC 1918,
  ULA), shared (100.64/10), link-local, multicast, reserved, unspecified, documentation
  and benchmark ranges (anything Python's ``ipaddress`` does not call global), IPv4
  embedded in IPv6 (mapped ``::ffff:a.b.c.d``, 6to4 ``2002::/16``, NAT64 ``64:ff9b::/96``)
  when the embedded address is refused, IPv4-compatible ``::a.b.c.d``, and the cloud metadata
  services (``METADATA_ADDRESSES``, ``METADATA_HOSTS``). If any one address is refused
  the whole host is: a DNS answer mixing a public and a private address is an attack.
- The operator's allow-list (``url_allowlist``: comma-separated host names and IP/CIDR
  ranges) opens exceptions. A listed host name is trusted whatever it resolves to
  (``*.example.com`` lists the subdomains). A listed range opens the addresses in it,
  except the metadata addresses: those open only when listed on their own (a /32 or
  /128), so allow-listing ``169.254.0.0/16`` for a link-local device does not also hand
  out cloud credentials.

DNS rebinding: checking a name at submit time and connecting later would let a name
that resolved to a public address then resolve to 127.0.0.1. So the check runs again
at connection time, inside the HTTP client: ``guarded_client`` gives httpx a network
backend (``GuardedBackend``) that resolves the host once, checks every address, and
connects to a checked IP. The URL, the Host header and TLS SNI/certificate checks keep
the original name, because httpcore takes those from the request, not from the socket.
Every redirect hop opens its connection through the same backend, so it is re-checked
too. Proxies from the environment are not used (``trust_env=False``): through a proxy
the peer address could not be checked.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from darkroom.errors import InvalidField

if TYPE_CHECKING:
    from darkroom.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> addresses; the default is socket.getaddrinfo. Tests inject fake DNS.
Resolver = Callable[[str, int], list[str]]

SCHEMES = ("http", "https")

# Cloud instance metadata services: credentials live here. Most are also refused as
# non-global; listing them keeps them refused inside an allow-listed range.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "169.254.169.253",  # AWS VPC DNS
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "fd00:ec2::253",
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud (Python calls this one global)
    )
)
METADATA_HOSTS: frozenset[str] = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data", "instance-data.ec2.internal"}
)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")


class UrlNotAllowed(InvalidField):
    """A URL darkroom will not call (422 ``url_not_allowed``, naming the field)."""

    code = "url_not_allowed"


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be called, or None if it is a public unicast address."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:  # judged by the IPv4 address it reaches
            reason = address_refusal(embedded)
            return f"an address embedding {embedded}, {reason}" if reason else None
        if int(ip) >> 32 == 0 and int(ip) > 1:
            return "a deprecated IPv4-compatible address"
        if ip in _NAT64_LOCAL:
            return "a local-use NAT64 address"
    checks = (
        (ip.is_loopback, "a loopback address"),
        (ip.is_unspecified, "the unspecified address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a mapped, 6to4 or NAT64 (64:ff9b::/96) IPv6 address leads to, else None.

    (Teredo, 2001::/32, is refused as a whole: Python counts it private.)
    """
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_ip(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Allowlist:
    """The operator's exceptions to the policy: host names and IP ranges."""

    hosts: frozenset[str] = frozenset()
    suffixes: tuple[str, ...] = ()  # from "*.example.com": ".example.com"
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: str | Iterable[str]) -> Allowlist:
        """From ``"host, *.example.com, 10.0.0.0/8, ::1"`` (or a list of those); raises ValueError."""
        if isinstance(entries, str):
            entries = entries.split(",")
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            name = _normalise_host(entry)
            if name.startswith("*."):
                name, wildcard = name[2:], True
            else:
                wildcard = False
            if not name or any(not label or not all(c.isalnum() or c in "-_" for c in label)
                               for label in name.split(".")):
                raise ValueError(f"url_allowlist entry {entry!r} is neither a host name nor an IP/CIDR range")
            if wildcard:
                suffixes.append("." + name)
            else:
                hosts.add(name)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def __bool__(self) -> bool:
        return bool(self.hosts or self.suffixes or self.networks)

    def allows_host(self, host: str) -> bool:
        host = _normalise_host(host)
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def allows_address(self, ip: IPAddress) -> bool:
        for net in self.networks:
            if ip.version != net.version or ip not in net:
                continue
            if ip in METADATA_ADDRESSES and net.num_addresses != 1:
                continue  # a range never opens a metadata address; only listing it alone does
            return True
        return False


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class NetGuard:
    """Decides whether darkroom may call a URL or connect to a host; see the module docstring."""

    def __init__(self, allowlist: Allowlist | str | Iterable[str] = (), *, resolve: Resolver | None = None) -> None:
        self.allowlist = allowlist if isinstance(allowlist, Allowlist) else Allowlist.parse(allowlist)
        self._resolve = resolve or _getaddrinfo

    @classmethod
    def from_settings(cls, settings: Settings) -> NetGuard:
        return cls(settings.url_allowlist)

    def __repr__(self) -> str:
        return f"NetGuard({self.allowlist!r})"

    def check_url(self, url: str, field: str = "url") -> list[IPAddress]:
        """Refuse ``url`` unless it is http(s) and its host passes ``allowed_addresses``.

        The URL is parsed the way httpx (the client that will call it) parses it, so the
        check and the call cannot disagree about the host. Returns the checked addresses.
        Raises UrlNotAllowed naming ``field``.
        """
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise UrlNotAllowed(field, f"is not a valid URL ({exc})") from exc
        if parsed.scheme not in SCHEMES:
            raise UrlNotAllowed(field, "must be an http or https URL")
        if not parsed.raw_host:
            raise UrlNotAllowed(field, "has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        return self.allowed_addresses(parsed.raw_host.decode("ascii"), port, field)

    def allowed_addresses(self, host: str, port: int, field: str = "url") -> list[IPAddress]:
        """Resolve ``host`` and return its addresses if every one may be called.

        Raises UrlNotAllowed (naming ``field``) if the host does not resolve, is a
        metadata name, or any address is refused and not allow-listed.
        """
        name = _normalise_host(host)
        trusted = self.allowlist.allows_host(name)
        if name in METADATA_HOSTS and not trusted:
            raise UrlNotAllowed(field, f"host {name!r} is a cloud metadata service")
        literal = _parse_ip(name)
        if literal is not None:
            candidates = [literal]
        else:
            try:
                resolved = self._resolve(name, port)
            except (OSError, UnicodeError) as exc:
                raise UrlNotAllowed(field, f"host {name!r} does not resolve ({exc})") from exc
            candidates = [ip for ip in (_parse_ip(a) for a in resolved) if ip is not None]
            if not candidates:
                raise UrlNotAllowed(field, f"host {name!r} does not resolve to an IP address")
        if not trusted:
            for ip in candidates:
                reason = address_refusal(ip)
                if reason is not None and not self.allowlist.allows_address(ip):
                    what = f"host {name!r} resolves to {ip}, " if literal is None else f"{ip} is "
                    raise UrlNotAllowed(field, f"{what}{reason}; the operator may allow it with DARKROOM_URL_ALLOWLIST")
        return candidates


class GuardedBackend(httpcore.NetworkBackend):
    """An httpcore network backend that connects only to addresses the guard allows.

    It resolves the host itself, checks every address, and hands the inner backend an
    IP literal, so no second, unchecked DNS lookup happens between check and connect.
    """

    def __init__(self, guard: NetGuard, inner: httpcore.NetworkBackend | None = None) -> None:
        self.guard = guard
        self.inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        addresses = self.guard.allowed_addresses(host, port)
        error: Exception | None = None
        for ip in addresses:
            try:
                return self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:  # try the host's next address, like create_connection
                error = exc
        assert error is not None
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise UrlNotAllowed("url", "unix sockets are not allowed")

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


class GuardedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections go through a ``GuardedBackend``.

    httpx does not take a network backend, so the connection pool it builds is swapped
    for one that has ours (``tests/test_netguard.py`` proves the swap takes effect).
    """

    def __init__(self, guard: NetGuard, *, max_connections: int = 10) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=max_connections,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(guard),
        )


def guarded_client(guard: NetGuard, *, timeout: float, follow_redirects: bool = False,
                   max_redirects: int = 5, **kwargs: Any) -> httpx.Client:
    """An httpx client that can reach only what ``guard`` allows, on every hop.

    A refused connection raises UrlNotAllowed (field ``url``) out of the request call;
    other failures are the usual httpx errors.
    """
    return httpx.Client(transport=GuardedTransport(guard), timeout=timeout, follow_redirects=follow_redirects,
                        max_redirects=max_redirects, trust_env=False, **kwargs)

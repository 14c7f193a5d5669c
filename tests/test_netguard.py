"""The SSRF guard: the address policy on a table, the allow-list, and the connect-time check.

No test here sends a packet anywhere but 127.0.0.1: refused addresses are refused
before a socket is opened (``test_refused_before_any_connection`` proves it), and
names resolve through a fake resolver.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pytest

from darkroom.errors import EngineError, InvalidField
from darkroom.netguard import Allowlist, GuardedBackend, NetGuard, UrlNotAllowed, guarded_client
from darkroom.worker.inputs import fetch_url

FAKE_DNS = {
    "example.com": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"],
    "localhost": ["127.0.0.1", "::1"],
    "mixed.test": ["93.184.215.14", "10.0.0.1"],  # one public, one private: an attack
    "internal.test": ["10.1.2.3"],
    "a.corp.test": ["10.9.9.9"],
    "b.a.corp.test": ["10.9.9.8"],
    "corp.test": ["10.9.9.7"],
    "loop.test": ["127.0.0.1"],
    "metadata.google.internal": ["169.254.169.254"],
}


def fake_resolve(host: str, port: int) -> list[str]:
    if host in FAKE_DNS:
        return FAKE_DNS[host]
    if host[0].isdigit():  # numeric forms (2130706433, 0x7f.1): libc parses them, no DNS involved
        import socket

        return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
    raise OSError(f"unknown host {host}")


def guard(allow: str = "") -> NetGuard:
    return NetGuard(allow, resolve=fake_resolve)


REFUSED = [
    "http://127.0.0.1/",
    "http://127.255.255.254:8080/x",
    "http://localhost/",
    "http://loop.test/",
    "http://2130706433/",  # decimal 127.0.0.1
    "http://0x7f000001/",  # hexadecimal
    "http://0x7f.1/",  # short hexadecimal form
    "http://127.1/",  # short dotted form
    "http://0177.0.0.1/",  # octal: httpx refuses the URL itself
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",  # IPv4-mapped
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.0.0.1]/",
    "http://[::7f00:1]/",  # IPv4-compatible (deprecated)
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    "http://[2002:a00:1::]/",  # 6to4 of 10.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
    "http://[2001::1]/",  # Teredo
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # shared address space (carrier NAT)
    "http://169.254.1.1/",  # link-local
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://[fd00:ec2::254]/",  # AWS metadata over IPv6
    "http://100.100.100.200/",  # Alibaba metadata
    "http://192.0.0.192/",  # Oracle metadata (Python calls it global)
    "http://metadata.google.internal/computeMetadata/v1/",  # by name, before any DNS
    "http://metadata/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://224.0.0.1/",  # multicast (Python calls it global)
    "http://[ff02::1]/",
    "http://[ff0e::1]/",  # global-scope multicast
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",  # reserved
    "http://198.18.0.1/",  # benchmarking
    "http://192.0.2.1/",  # documentation
    "http://[2001:db8::1]/",
    "http://mixed.test/",  # every resolved address is checked
    "http://internal.test/",
    "http://nxdomain.test/",  # does not resolve
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://example.com/",
    "http:///nohost",
    "not a url",
]

ALLOWED = [
    "http://example.com/hook",
    "https://example.com:8443/hook?x=1",
    "http://93.184.215.14/",
    "http://8.8.8.8/",
    "http://[2606:4700:4700::1111]/",
    "http://[::ffff:8.8.8.8]/",  # mapped public address
    "http://[2002:808:808::]/",  # 6to4 of a public address
    "http://[64:ff9b::808:808]/",  # NAT64 (DNS64 networks) of a public address
    "http://EXAMPLE.com./",  # case and trailing dot
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(UrlNotAllowed) as info:
        guard().check_url(url, "webhook_url")
    assert info.value.code == "url_not_allowed"
    assert info.value.field == "webhook_url"
    assert info.value.status_code == 422
    assert isinstance(info.value, InvalidField)


@pytest.mark.parametrize("url", ALLOWED)
def test_allowed(url: str) -> None:
    assert guard().check_url(url, "webhook_url")


@pytest.mark.parametrize(
    ("allow", "url", "ok"),
    [
        ("127.0.0.0/8", "http://127.0.0.1:9/", True),
        ("127.0.0.0/8", "http://2130706433/", True),
        ("127.0.0.0/8", "http://[::ffff:127.0.0.1]/", True),  # mapped: judged as the IPv4 address
        ("127.0.0.0/8", "http://[::1]/", False),
        ("127.0.0.0/8", "http://localhost/", False),  # ::1 too, and it is not listed
        ("127.0.0.0/8, ::1", "http://localhost/", True),
        ("127.0.0.0/8", "http://10.0.0.1/", False),
        ("127.0.0.0/8", "http://169.254.169.254/", False),
        ("10.0.0.0/8", "http://internal.test/", True),
        ("10.0.0.0/8", "http://mixed.test/", True),
        ("10.0.0.1", "http://10.0.0.1/", True),  # a bare address is a /32
        ("10.0.0.1", "http://10.0.0.2/", False),
        ("internal.test", "http://internal.test/", True),  # a listed name is trusted whatever it resolves to
        ("INTERNAL.test.", "http://internal.test./", True),
        ("internal.test", "http://a.corp.test/", False),
        ("*.corp.test", "http://a.corp.test/", True),
        ("*.corp.test", "http://b.a.corp.test/", True),
        ("*.corp.test", "http://corp.test/", False),
        ("169.254.0.0/16", "http://169.254.1.1/", True),
        ("169.254.0.0/16", "http://169.254.169.254/", False),  # a range never opens a metadata address
        ("169.254.169.254", "http://169.254.169.254/", True),  # listed on its own, it opens
        ("0.0.0.0/0", "http://169.254.169.254/", False),
        ("metadata.google.internal", "http://metadata.google.internal/", True),
        ("127.0.0.0/8", "ftp://127.0.0.1/", False),  # the scheme is never allow-listed
    ],
)
def test_allowlist(allow: str, url: str, ok: bool) -> None:
    g = NetGuard(Allowlist.parse(allow), resolve=lambda h, p: FAKE_DNS.get(h) or fake_resolve(h, p))
    if ok:
        assert g.check_url(url, "f")
    else:
        with pytest.raises(UrlNotAllowed):
            g.check_url(url, "f")


@pytest.mark.parametrize("bad", ["not a host!", "10.0.0.0/33", "a..b", "*."])
def test_allowlist_parse_errors(bad: str) -> None:
    with pytest.raises(ValueError):
        Allowlist.parse(bad)


def test_settings_refuse_a_bad_allowlist() -> None:
    from pydantic import ValidationError

    from darkroom.settings import Settings

    with pytest.raises(ValidationError):
        Settings(url_allowlist="10.0.0.0/33")
    assert Settings(url_allowlist=" 127.0.0.0/8 , ,example.org").url_allowlist


# -- connect time ---------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append((self.path, self.headers.get("Host")))  # type: ignore[attr-defined]
        route = self.server.routes.get(self.path, (200, {}, b"hello"))  # type: ignore[attr-defined]
        status, headers, body = route
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            if headers.get("Transfer-Encoding") == "chunked":
                for i in range(0, len(body), 100):
                    part = body[i:i + 100]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.wfile.write(body)
        except ConnectionError:
            # The size-cap tests' client hangs up mid-body on purpose; without this the server thread
            # prints socketserver's traceback for it into the test run's output.
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[ThreadingHTTPServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    httpd.seen = []  # type: ignore[attr-defined]
    httpd.routes = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


class _NoConnect(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # type: ignore[no-untyped-def]
        self.calls.append((host, port))
        raise httpcore.ConnectError("the test backend never connects")


@pytest.mark.parametrize("host", ["10.0.0.1", "169.254.169.254", "127.0.0.1", "::1", "mixed.test", "loop.test"])
def test_refused_before_any_connection(host: str) -> None:
    inner = _NoConnect()
    backend = GuardedBackend(guard(), inner)
    with pytest.raises(UrlNotAllowed):
        backend.connect_tcp(host, 80, timeout=1)
    assert inner.calls == []


def test_connects_to_the_checked_address_only() -> None:
    inner = _NoConnect()
    with pytest.raises(httpcore.ConnectError):
        GuardedBackend(guard(), inner).connect_tcp("example.com", 80)
    assert inner.calls == [("93.184.215.14", 80), ("2606:2800:21f:cb07:6820:80da:af6b:8b2c", 80)]


def test_client_refuses_loopback_without_allowlist(local_server: ThreadingHTTPServer) -> None:
    port = local_server.server_address[1]
    with guarded_client(guard(), timeout=5) as client, pytest.raises(UrlNotAllowed):
        client.get(f"http://127.0.0.1:{port}/")
    assert local_server.seen == []  # type: ignore[attr-defined]


def test_client_connects_to_the_checked_ip_and_keeps_the_host_header(local_server: ThreadingHTTPServer) -> None:
    # loop.test exists only in the fake DNS: the request can only arrive if the guard's own
    # resolution picked the address, and the Host header still names the host.
    port = local_server.server_address[1]
    with guarded_client(guard("127.0.0.0/8"), timeout=5) as client:
        resp = client.get(f"http://loop.test:{port}/x")
    assert resp.status_code == 200
    assert local_server.seen == [("/x", f"loop.test:{port}")]  # type: ignore[attr-defined]


def test_dns_rebinding_is_caught_at_connect_time(local_server: ThreadingHTTPServer) -> None:
    # First answer public (the submit-time check passes), then loopback (the connection).
    answers = iter([["93.184.215.14"], ["127.0.0.1"]])
    g = NetGuard(resolve=lambda host, port: next(answers))
    port = local_server.server_address[1]
    url = f"http://rebind.test:{port}/"
    g.check_url(url, "webhook_url")
    with guarded_client(g, timeout=5) as client, pytest.raises(UrlNotAllowed):
        client.get(url)
    assert local_server.seen == []  # type: ignore[attr-defined]


# -- fetch_url (input_image URLs) ---------------------------------------------------------


def test_fetch_url_refuses_loopback_by_default(local_server: ThreadingHTTPServer) -> None:
    port = local_server.server_address[1]
    with pytest.raises(EngineError) as info:
        fetch_url(f"http://127.0.0.1:{port}/img", max_bytes=1000, timeout_s=5)
    assert info.value.code == "invalid_input_image"
    assert "loopback" in info.value.message
    assert local_server.seen == []  # type: ignore[attr-defined]


def test_fetch_url_with_allowlist(local_server: ThreadingHTTPServer) -> None:
    port = local_server.server_address[1]
    got = fetch_url(f"http://127.0.0.1:{port}/img", max_bytes=1000, timeout_s=5, guard=guard("127.0.0.0/8"))
    assert got == b"hello"


@pytest.mark.parametrize("target", ["http://10.0.0.1/img", "http://169.254.169.254/latest", "http://[::1]/img"])
def test_fetch_url_rechecks_redirects(local_server: ThreadingHTTPServer, target: str) -> None:
    local_server.routes["/r"] = (302, {"Location": target}, b"")  # type: ignore[attr-defined]
    port = local_server.server_address[1]
    with pytest.raises(EngineError) as info:
        fetch_url(f"http://127.0.0.1:{port}/r", max_bytes=1000, timeout_s=5, guard=guard("127.0.0.0/8"))
    assert "may not be fetched" in info.value.message


def test_fetch_url_follows_allowed_redirects(local_server: ThreadingHTTPServer) -> None:
    port = local_server.server_address[1]
    local_server.routes["/r"] = (302, {"Location": f"http://127.0.0.1:{port}/img"}, b"")  # type: ignore[attr-defined]
    assert fetch_url(f"http://127.0.0.1:{port}/r", max_bytes=1000, timeout_s=5, guard=guard("127.0.0.0/8")) == b"hello"


@pytest.mark.parametrize("headers", [{}, {"Transfer-Encoding": "chunked"}], ids=["content-length", "chunked"])
def test_fetch_url_size_cap(local_server: ThreadingHTTPServer, headers: dict[str, str]) -> None:
    local_server.routes["/big"] = (200, headers, b"x" * 5000)  # type: ignore[attr-defined]
    port = local_server.server_address[1]
    with pytest.raises(EngineError, match="larger than 1000 bytes"):
        fetch_url(f"http://127.0.0.1:{port}/big", max_bytes=1000, timeout_s=5, guard=guard("127.0.0.0/8"))

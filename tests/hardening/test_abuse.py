"""Limits under abuse, against a real ``darkroom serve`` on loopback: oversized and slow
requests are refused without holding memory or connections, and one key's flood neither
starves another key's requests nor stops ``/healthz`` from answering.

Nothing here depends on the machine's speed: slow clients send until the server answers (or a
generous deadline passes); memory is read from the server's own peak RSS (``VmHWM``, reset
before each attack); fairness is judged on the order in which the worker claimed requests.
"""

from __future__ import annotations

import base64
import io
import json
import os
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from darkroom.store import Store
from darkroom.testing.api import BASE, start_deployment
from darkroom.testing.server import wait_for

MAX_BODY = 1024 * 1024
ATTACK = 30 * 1000 * 1000  # a 30 MB body
LIMITS = {"DARKROOM_MAX_BODY_BYTES": str(MAX_BODY), "DARKROOM_BODY_READ_TIMEOUT_S": "2",
          "DARKROOM_HEADER_READ_TIMEOUT_S": "2", "DARKROOM_MAX_HEADER_BYTES": "16384"}
PATIENCE_S = 120  # how long a client waits for an answer: far beyond any limit under test


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, tiny_models: Path):
    """An API (no worker) with a 1 MiB body limit and 2 s header and body deadlines."""
    dep = start_deployment(tmp_path_factory.mktemp("guarded"), tiny_models, worker=False, **LIMITS)
    yield dep
    dep.server.stop()


# -- raw HTTP over a socket: the attacks need control over every byte and its timing ---------

def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=PATIENCE_S)


def _head(method: str, path: str, key: str, extra: str = "") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n{extra}\r\n").encode()


def _push_until_answered(sock: socket.socket, chunks: Iterator[bytes]) -> int:
    """Send ``chunks`` as fast as the server takes them, stopping as soon as it answers (or
    closes); returns the bytes sent."""
    sent, pending = 0, b""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline:
        if not pending:
            pending = next(chunks, b"")
            if not pending:
                return sent
        readable, writable, _ = select.select([sock], [sock], [], 1.0)
        if readable:
            return sent
        if writable:
            try:
                n = sock.send(pending)
            except (BrokenPipeError, ConnectionResetError):
                return sent
            sent, pending = sent + n, pending[n:]
    raise AssertionError(f"the server neither took nor refused the body within {PATIENCE_S} s")


def _dribble_until_answered(sock: socket.socket, data: bytes, every_s: float = 0.25) -> int:
    """Send ``data`` a byte at a time, one every ``every_s``, until the server answers or
    closes; returns the bytes sent (the whole of ``data`` means it never answered)."""
    for i in range(len(data)):
        readable, _, _ = select.select([sock], [], [], every_s)
        if readable:
            return i
        try:
            sock.send(data[i:i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return i
    return len(data)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the server's answer; (0, {}, b"") if it closed without one.
    Asserts that the server closed the connection after it."""
    data = b""
    sock.settimeout(PATIENCE_S)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # the server closed with our unsent body unread: what it wrote before still counts
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc")


def _reset_peak_rss(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: VmHWM starts again from the current RSS


def _chunked(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    piece = b"x" * size
    for _ in range(total // size):
        yield b"%x\r\n%s\r\n" % (size, piece)
    yield b"0\r\n\r\n"


def _plain(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    piece = b"x" * size
    for _ in range(total // size):
        yield piece


# -- bodies over the limit ------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_a_30_mb_body_is_refused_with_413_without_being_read_into_memory(guarded, framing: str) -> None:
    pid = guarded.server.pid
    _reset_peak_rss(pid)
    before = _peak_rss_mb(pid)
    with _connect(guarded.server.url) as sock:
        if framing == "content-length":
            sock.sendall(_head("POST", f"{BASE}/requests", guarded.a.key, f"Content-Length: {ATTACK}\r\n"))
            sent = _push_until_answered(sock, _plain(ATTACK))
        else:
            sock.sendall(_head("POST", f"{BASE}/requests", guarded.a.key, "Transfer-Encoding: chunked\r\n"))
            sent = _push_until_answered(sock, _chunked(ATTACK))
        status, headers, body = _read_response(sock)
    grew = _peak_rss_mb(pid) - before
    print(f"{framing}: sent {sent / 1e6:.1f} MB of {ATTACK / 1e6:.0f} MB before the answer; "
          f"API peak RSS grew {grew:.1f} MB")
    assert status == 413, (status, body)
    assert headers.get("connection") == "close"
    assert json.loads(body)["error"] == {"code": "payload_too_large",
                                         "message": f"request body is larger than {MAX_BODY} bytes"}
    assert sent < ATTACK  # refused before the whole body was taken
    assert grew < 10, f"the API's peak RSS grew {grew:.1f} MB for a refused body"
    assert guarded.a.get("/requests").status_code == 200  # and it serves the next client


def test_a_body_under_the_limit_is_still_accepted(guarded) -> None:
    noise = Image.frombytes("RGB", (380, 380), os.urandom(380 * 380 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    assert MAX_BODY // 2 < len(image) < MAX_BODY
    resp = guarded.a.post("/requests", {"model": "tiny-edit", "payload": {"prompt": "sharper", "input_image": image}})
    assert resp.status_code == 200, resp.text


# -- slow clients ---------------------------------------------------------------------------

@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_request_sent_a_byte_at_a_time_is_cut_off_with_408(guarded, part: str) -> None:
    body = json.dumps({"model": "tiny", "payload": {"prompt": "a red circle " * 40}}).encode()
    head = _head("POST", f"{BASE}/requests", guarded.a.key,
                 f"Content-Length: {len(body)}\r\nX-Padding: {'p' * 2000}\r\n")
    with _connect(guarded.server.url) as sock:
        if part == "body":
            sock.sendall(head)
        dribbled = body if part == "body" else head
        sent = _dribble_until_answered(sock, dribbled)
        status, headers, reply = _read_response(sock)
    assert sent < len(dribbled), f"the server waited for the whole dribbled {part}"
    assert status == 408 and headers.get("connection") == "close"
    assert json.loads(reply)["error"]["code"] == "request_timeout"


def test_an_idle_connection_is_closed_without_an_answer(guarded) -> None:
    with _connect(guarded.server.url) as sock:
        assert _read_response(sock) == (0, {}, b"")  # closed: recv saw the end, not our timeout


def test_oversized_headers_are_refused_with_431(guarded) -> None:
    with _connect(guarded.server.url) as sock:
        sent = _push_until_answered(sock, iter([_head("GET", "/healthz", guarded.a.key, "X-Big: " + "b" * 100_000)]))
        status, _, reply = _read_response(sock)
    assert sent <= 100_200
    assert status == 431 and json.loads(reply)["error"]["code"] == "headers_too_large"


def test_forty_slow_connections_neither_stop_a_normal_client_nor_stay_open(guarded) -> None:
    body = json.dumps({"model": "tiny", "payload": {"prompt": "a slow red circle"}}).encode()
    slow = []
    for i in range(40):
        sock = _connect(guarded.server.url)
        if i % 2:  # half stall in their headers, half in their bodies
            sock.sendall(_head("POST", f"{BASE}/requests", guarded.a.key,
                               f"Content-Length: {len(body)}\r\n") + body[:5])
        else:
            sock.sendall(b"POST /api/v1/ie/requestqueue/apikey/requests HTTP/1.1\r\nHost: 127.0.0.1\r\nX-")
        slow.append(sock)
    try:
        assert httpx.get(f"{guarded.server.url}/healthz", timeout=PATIENCE_S).status_code == 200
        assert guarded.b.post("/requests", {"model": "tiny", "payload": {"prompt": "a normal client"}}).status_code \
            == 200
        # None of them is kept: each is answered 408 (or closed) by the server, not by our patience.
        answers = [_read_response(sock)[0] for sock in slow]
        assert answers == [408] * 40
    finally:
        for sock in slow:
            sock.close()


# -- one key's flood against another key's few --------------------------------------------

FLOOD = 500
FLOOD_THREADS = 4
BATCH = 4
STEPS = 20  # every request alike, so that any batch may take any of them


class _HealthProbe(threading.Thread):
    """GETs /healthz back to back while the flood runs; records each answer and its latency."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.answers: list[tuple[int, float]] = []

    def run(self) -> None:
        with httpx.Client(timeout=PATIENCE_S) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                status = client.get(f"{self.url}/healthz").status_code
                self.answers.append((status, time.perf_counter() - started))
                self.stop.wait(0.05)


def test_a_flood_from_one_key_does_not_starve_another_key(tmp_path: Path, tiny_models: Path) -> None:
    """500 submits from alice, 3 from bob in the middle of them, one real worker (serve's
    child) claiming all along: bob's requests are queued a round from the head and claimed
    within the next claims, and /healthz answers throughout.

    The bounds follow from the queue's order (priority, turn, seq) and do not depend on how
    far the worker got: bob's k-th request (k = 0, 1, 2) has at most k + 1 of alice's turns
    and k of his own ahead of it, and at most one claim batch may race its submit (the claim
    takes its clock before the write lock).
    """
    dep = start_deployment(tmp_path, tiny_models, DARKROOM_MAX_BATCH=str(BATCH))
    probe = _HealthProbe(dep.server.url)
    probe.start()
    submitted: list[str] = []
    lock = threading.Lock()
    halfway = threading.Event()

    errors: list[BaseException] = []

    def flood(share: int) -> None:
        try:
            with httpx.Client(base_url=f"{dep.server.url}{BASE}", headers=dep.a.headers,
                              timeout=PATIENCE_S) as client:
                for _ in range(share):
                    resp = client.post("/requests", json={"model": "tiny",
                                                          "payload": {"prompt": "a flood", "steps": STEPS}})
                    assert resp.status_code == 200, resp.text
                    with lock:
                        submitted.append(resp.json()["request_id"])
                        if len(submitted) >= FLOOD // 2:
                            halfway.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test's thread below
            errors.append(exc)
            halfway.set()

    threads = [threading.Thread(target=flood, args=(FLOOD // FLOOD_THREADS,)) for _ in range(FLOOD_THREADS)]
    try:
        for thread in threads:
            thread.start()
        assert halfway.wait(PATIENCE_S * 5), "alice's flood did not get halfway"
        assert not errors, errors
        bob = []
        for k in range(3):
            request = dep.b.submit("tiny", prompt="bob's turn", steps=STEPS)
            bob.append(request["request_id"])
            position = dep.b.status(request["request_id"])["queue_position"]
            with lock:
                backlog = len(submitted)
            print(f"bob's request {k}: queue position {position} with {backlog} of alice's submitted")
            assert position is None or position <= 2 * k + 1  # None: already claimed
        for thread in threads:
            thread.join(PATIENCE_S * 5)
        assert not errors, errors
        assert len(submitted) == FLOOD
        for request_id in bob:
            dep.b.wait(request_id, until=("processing", "success"), timeout=PATIENCE_S * 5)
    finally:
        probe.stop.set()
        probe.join(PATIENCE_S)
        dep.server.stop()

    store = Store(f"sqlite:///{dep.data_dir / 'darkroom.db'}")
    alice_started = sorted(r.started_at for r in (store.get_request(i) for i in submitted) if r.started_at)
    for k, request_id in enumerate(bob):
        mine = store.get_request(request_id)
        assert mine is not None and mine.started_at is not None
        overtaking = sum(mine.created_at < t < mine.started_at for t in alice_started)
        print(f"bob's request {k}: {overtaking} of alice's claimed between its submit and its claim")
        assert overtaking <= (k + 1) + BATCH

    statuses = [s for s, _ in probe.answers]
    latencies = sorted(dt for _, dt in probe.answers)
    print(f"/healthz during the flood: {len(latencies)} answers, median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms")
    assert statuses and set(statuses) == {200}


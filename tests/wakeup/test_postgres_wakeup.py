"""PostgreSQL wake-ups (LISTEN/NOTIFY) against the throwaway cluster, across real processes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import _wakeup_children
import pytest

from darkroom.wakeup import QUEUE, REQUEST, AsyncHub, Listener, PostgresWakeup, Signal, wakeup_for

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def wakeup(pg_url: str) -> Iterator[PostgresWakeup]:
    w = wakeup_for(pg_url)
    assert isinstance(w, PostgresWakeup)
    yield w
    w.close()


def _terminate(pg_url: str, query_prefix: str) -> int:
    """pg_terminate_backend the wake-up connections whose last query starts with ``query_prefix``."""
    params = PostgresWakeup(pg_url).params
    with psycopg.connect(**{**params, "application_name": "test"}, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'darkroom-wakeup' AND datname = current_database() AND query LIKE %s",
            (query_prefix + "%",),
        ).fetchall()
    return len(rows)


@pytest.mark.postgres
def test_notify_from_another_process_wakes_a_listener(wakeup: PostgresWakeup, pg_url: str) -> None:
    with wakeup.listen([REQUEST]) as listener:
        started = time.monotonic()
        child = _wakeup_children.spawn("notify", pg_url, REQUEST, "req-42")
        signals = listener.wait(30)
        woke = time.time()
        elapsed = time.monotonic() - started
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert signals == [Signal(REQUEST, "req-42")]
    assert elapsed < 20
    assert woke - float(out) < 5


def _collect(listener: Listener, count: int) -> list[Signal]:
    """Wait until ``count`` signals have arrived (they may come in one wait or several)."""
    signals: list[Signal] = []
    deadline = time.monotonic() + 30
    while len(signals) < count and time.monotonic() < deadline:
        signals += listener.wait(deadline - time.monotonic())
    return signals


@pytest.mark.postgres
def test_payloads_and_channels(wakeup: PostgresWakeup) -> None:
    with wakeup.listen([QUEUE]) as queue, wakeup.listen([QUEUE, REQUEST]) as both:
        wakeup.notify(REQUEST, "r1")
        wakeup.notify(QUEUE, "model-a")
        wakeup.notify(QUEUE, "")
        assert _collect(queue, 2) == [Signal(QUEUE, "model-a"), Signal(QUEUE, "")]
        assert _collect(both, 3) == [Signal(REQUEST, "r1"), Signal(QUEUE, "model-a"), Signal(QUEUE, "")]
        assert queue.wait(0.05) == [] and both.wait(0) == []


@pytest.mark.postgres
def test_a_listener_survives_the_termination_of_its_connection(wakeup: PostgresWakeup, pg_url: str) -> None:
    with wakeup.listen([QUEUE, REQUEST]) as listener:
        assert _terminate(pg_url, "LISTEN") == 1
        started = time.monotonic()
        # It notices, reconnects and says "anything may have changed meanwhile".
        assert listener.wait(30) == [Signal(QUEUE, ""), Signal(REQUEST, "")]
        assert time.monotonic() - started < 20
        wakeup.notify(REQUEST, "after")
        assert listener.wait(30) == [Signal(REQUEST, "after")]


@pytest.mark.postgres
def test_notify_survives_the_termination_of_its_connection(wakeup: PostgresWakeup, pg_url: str) -> None:
    with wakeup.listen([REQUEST]) as listener:
        wakeup.notify(REQUEST, "first")
        assert listener.wait(30) == [Signal(REQUEST, "first")]
        assert _terminate(pg_url, "SELECT pg_notify") == 1
        wakeup.notify(REQUEST, "second")  # reconnects once, transparently
        assert listener.wait(30) == [Signal(REQUEST, "second")]


@pytest.mark.postgres
def test_a_payload_the_server_refuses_is_dropped_quietly(wakeup: PostgresWakeup) -> None:
    with wakeup.listen([REQUEST]) as listener:
        wakeup.notify(REQUEST, "x" * 10_000)  # over PostgreSQL's 8000-byte limit
        wakeup.notify(REQUEST, "ok")
        assert listener.wait(30) == [Signal(REQUEST, "ok")]


@pytest.mark.postgres
def test_async_hub_over_postgres(wakeup: PostgresWakeup) -> None:
    hub = AsyncHub(wakeup)
    hub.start()

    async def main() -> None:
        with hub.subscribe("X") as sub:
            wakeup.notify(REQUEST, "Y")
            assert await sub.changed(0.3) is False
            wakeup.notify(REQUEST, "X")
            assert await sub.changed(30) is True

    try:
        asyncio.run(main())
    finally:
        hub.stop()


def test_an_unreachable_server_never_raises() -> None:
    with socket.socket() as s:  # a free port: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    wakeup = PostgresWakeup(f"postgresql+psycopg://nobody@127.0.0.1:{port}/none")
    wakeup.notify(QUEUE, "m")  # refused at once: logged, dropped
    wakeup.notify(QUEUE, "m")  # within the back-off: dropped without trying
    listener = wakeup.listen([QUEUE])  # deaf until the server is reachable
    started = time.monotonic()
    assert listener.wait(0.2) == []
    assert listener.wait(0.2) == []  # retries at most per back-off, sleeps out the rest
    assert 0.3 <= time.monotonic() - started < 10
    listener.close()
    wakeup.close()

"""AsyncHub over SQLite wake-ups: asyncio subscriptions woken from threads and processes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import _wakeup_children
import pytest

from darkroom.wakeup import QUEUE, REQUEST, AsyncHub, SqliteWakeup


@pytest.fixture
def db() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="dw-"))
    yield directory / "darkroom.db"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def wakeup(db: Path) -> Iterator[SqliteWakeup]:
    w = SqliteWakeup(db)
    yield w
    w.close()


@pytest.fixture
def hub(wakeup: SqliteWakeup) -> Iterator[AsyncHub]:
    h = AsyncHub(wakeup)
    h.start()
    yield h
    h.stop()


def test_a_subscription_wakes_on_its_request_only(hub: AsyncHub, wakeup: SqliteWakeup) -> None:
    async def main() -> None:
        with hub.subscribe("X") as sub:
            threading.Thread(target=wakeup.notify, args=(REQUEST, "Y")).start()
            assert await sub.changed(0.3) is False
            threading.Thread(target=wakeup.notify, args=(REQUEST, "X")).start()
            started = time.monotonic()
            assert await sub.changed(30) is True
            assert time.monotonic() - started < 20

    asyncio.run(main())


def test_a_notify_from_another_process_wakes_a_subscription(hub: AsyncHub, db: Path) -> None:
    async def main() -> None:
        with hub.subscribe("req-1") as sub:
            child = _wakeup_children.spawn("notify", f"sqlite:///{db}", REQUEST, "req-1")
            assert await sub.changed(30) is True
            woke = time.time()
            out, _ = await asyncio.to_thread(child.communicate, timeout=30)
            assert woke - float(out) < 5

    asyncio.run(main())


def test_a_change_between_two_waits_is_not_lost(hub: AsyncHub, wakeup: SqliteWakeup) -> None:
    async def main() -> None:
        with hub.subscribe("X") as first, hub.subscribe("X") as second:
            wakeup.notify(REQUEST, "X")
            assert await first.changed(30) is True
            # Dispatched to both in one go while `second` was not awaiting: remembered.
            assert await second.changed(0) is True
            assert await second.changed(0) is False  # and consumed
            assert await first.changed(0.05) is False

    asyncio.run(main())


def test_timeout_returns_false(hub: AsyncHub) -> None:
    async def main() -> None:
        started = time.monotonic()
        assert await hub.wait_request("nobody-notifies", 0.2) is False
        assert time.monotonic() - started >= 0.15

    asyncio.run(main())


def test_wait_request(hub: AsyncHub, wakeup: SqliteWakeup) -> None:
    async def main() -> None:
        asyncio.get_running_loop().call_later(0.05, wakeup.notify, REQUEST, "X")
        assert await hub.wait_request("X", 30) is True

    asyncio.run(main())


def test_a_wildcard_wakes_every_subscription_of_its_channel(hub: AsyncHub, wakeup: SqliteWakeup) -> None:
    async def main() -> None:
        with hub.subscribe("a") as a, hub.subscribe("b") as b, hub.subscribe_queue() as queue:
            wakeup.notify(REQUEST, "")
            assert await a.changed(30) and await b.changed(30)
            assert await queue.changed(0.05) is False
            wakeup.notify(QUEUE, "some-model")
            assert await queue.changed(30) is True

    asyncio.run(main())


def test_subscriptions_on_two_event_loops(hub: AsyncHub, wakeup: SqliteWakeup) -> None:
    results: list[bool] = []
    subscribed = threading.Barrier(3)

    def other_loop() -> None:
        async def main() -> None:
            with hub.subscribe("X") as sub:
                subscribed.wait()
                results.append(await sub.changed(30))

        asyncio.run(main())

    threads = [threading.Thread(target=other_loop) for _ in range(2)]
    for t in threads:
        t.start()
    subscribed.wait()
    wakeup.notify(REQUEST, "X")
    for t in threads:
        t.join(30)
    assert results == [True, True]


def test_unsubscribed_requests_leave_nothing_behind(hub: AsyncHub) -> None:
    async def main() -> None:
        with hub.subscribe("X"), hub.subscribe("X"), hub.subscribe("Y"):
            assert set(hub._subs[REQUEST]) == {"X", "Y"}
        assert hub._subs == {}

    asyncio.run(main())


def test_stop_closes_the_listener_and_subscribe_restarts(wakeup: SqliteWakeup) -> None:
    hub = AsyncHub(wakeup)

    async def main() -> None:
        with hub.subscribe("X") as sub:  # starts the hub lazily
            assert wakeup.directory.exists()
            hub.stop()
            assert not wakeup.directory.exists()  # its socket (the only one) is gone
            hub.start()
            wakeup.notify(REQUEST, "X")
            assert await sub.changed(30) is True  # still registered across the restart
        hub.stop()

    asyncio.run(main())

"""In-process wake-ups, and which transport each store URL gets."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from darkroom.wakeup import QUEUE, REQUEST, LocalWakeup, PostgresWakeup, Signal, SqliteWakeup, wakeup_for
from darkroom.wakeup.sqlite import rendezvous_dir


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&cache=shared&uri=true", "mysql://u@h/db"],
)
def test_in_memory_and_other_stores_wake_in_process(url: str) -> None:
    assert isinstance(wakeup_for(url), LocalWakeup)


def test_a_sqlite_file_gets_sockets_beside_it(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path}/x.db", f"sqlite:///file:{tmp_path}/x.db?mode=rwc&uri=true"):
        wakeup = wakeup_for(url)
        assert isinstance(wakeup, SqliteWakeup)
        assert wakeup.directory == rendezvous_dir(tmp_path / "x.db")


def test_postgresql_gets_listen_notify() -> None:
    pytest.importorskip("psycopg")
    wakeup = wakeup_for("postgresql+psycopg://user:secret@db.example:6543/darkroom")  # connects lazily
    assert isinstance(wakeup, PostgresWakeup)
    assert wakeup.params["host"] == "db.example" and wakeup.params["port"] == "6543"
    assert wakeup.params["password"] == "secret" and wakeup.params["dbname"] == "darkroom"


def test_notify_from_a_thread_wakes_a_listener() -> None:
    wakeup = LocalWakeup()
    listener = wakeup.listen([QUEUE])
    thread = threading.Timer(0.05, wakeup.notify, args=(QUEUE, "m"))
    started = time.monotonic()
    thread.start()
    assert listener.wait(30) == [Signal(QUEUE, "m")]
    assert time.monotonic() - started < 20
    thread.join()


def test_filters_drains_coalesces_and_times_out() -> None:
    wakeup = LocalWakeup()
    wakeup.notify(QUEUE, "before")  # not delivered: no listener yet
    queue, request = wakeup.listen([QUEUE]), wakeup.listen([REQUEST])
    for payload in ("a", "b", "a"):
        wakeup.notify(REQUEST, payload)
    assert queue.wait(0.05) == []
    assert request.wait(1) == [Signal(REQUEST, "a"), Signal(REQUEST, "b")]
    assert request.wait(0) == []
    with pytest.raises(io.UnsupportedOperation):
        queue.fileno()
    queue.close()
    wakeup.notify(QUEUE, "after close")
    with pytest.raises(ValueError):
        queue.wait(0)
    wakeup.close()

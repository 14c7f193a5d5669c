"""SQLite wake-ups: Unix datagram sockets in a rendezvous directory, across real processes."""

from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import stat
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import _wakeup_children
import pytest

from darkroom.wakeup import QUEUE, REQUEST, Signal, SqliteWakeup, wakeup_for
from darkroom.wakeup.sqlite import SOCKET_PATH_MAX, _overflow_threshold, rendezvous_dir


@pytest.fixture
def db() -> Iterator[Path]:
    """A database path short enough for the rendezvous directory to sit beside it
    (pytest's tmp_path is too long: it would fall back to the temp dir)."""
    directory = Path(tempfile.mkdtemp(prefix="dw-"))
    yield directory / "darkroom.db"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def wakeup(db: Path) -> Iterator[SqliteWakeup]:
    w = wakeup_for(f"sqlite:///{db}")
    assert isinstance(w, SqliteWakeup)
    yield w
    w.close()


def _sockets(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def test_rendezvous_dir_is_beside_the_database_and_private(wakeup: SqliteWakeup, db: Path) -> None:
    assert wakeup.directory == Path(f"{db}.wakeup")
    assert not wakeup.directory.exists()  # made by the first listener, not by notify
    with wakeup.listen([QUEUE]):
        mode = os.lstat(wakeup.directory).st_mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) & 0o077 == 0
        assert len(_sockets(wakeup.directory)) == 1
        with wakeup.listen([QUEUE]):
            assert len(_sockets(wakeup.directory)) == 2
        assert len(_sockets(wakeup.directory)) == 1
    assert not wakeup.directory.exists()  # the last listener out removes its socket and the directory


def test_notify_from_another_process_wakes_a_listener(wakeup: SqliteWakeup, db: Path) -> None:
    with wakeup.listen([QUEUE]) as listener:
        started = time.monotonic()
        child = _wakeup_children.spawn("notify", f"sqlite:///{db}", QUEUE, "model-a")
        signals = listener.wait(30)
        woke = time.time()
        elapsed = time.monotonic() - started
        out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    assert signals == [Signal(QUEUE, "model-a")]
    assert elapsed < 20  # woken, not timed out (the child's interpreter start is most of it)
    assert woke - float(out) < 5  # from the child's notify to our wake-up: milliseconds, in practice


def test_listener_filters_by_channel(wakeup: SqliteWakeup) -> None:
    with wakeup.listen([QUEUE]) as queue, wakeup.listen([REQUEST]) as request:
        wakeup.notify(REQUEST, "r1")
        wakeup.notify(QUEUE, "m1")
        assert request.wait(5) == [Signal(REQUEST, "r1")]
        assert queue.wait(5) == [Signal(QUEUE, "m1")]
        wakeup.notify(REQUEST, "r2")
        assert queue.wait(0.1) == []
        assert request.wait(5) == [Signal(REQUEST, "r2")]


def test_a_listener_on_many_channels_filters_on_receipt(wakeup: SqliteWakeup) -> None:
    # Three channels: the socket name says "all", so every notify reaches it.
    with wakeup.listen(["a", "b", "c"]) as listener:
        wakeup.notify("d", "x")
        wakeup.notify("b", "y")
        assert listener.wait(5) == [Signal("b", "y")]


def test_a_channel_hash_collision_is_filtered_on_receipt(wakeup: SqliteWakeup) -> None:
    code = zlib.crc32(QUEUE.encode()) & 0xFFFF
    twin = next(f"c{i}" for i in range(10**6) if zlib.crc32(f"c{i}".encode()) & 0xFFFF == code)
    with wakeup.listen([QUEUE]) as listener:
        wakeup.notify(twin, "x")
        assert listener.wait(0.1) == []
        wakeup.notify(QUEUE, "m")
        assert listener.wait(5) == [Signal(QUEUE, "m")]


def test_wait_drains_and_coalesces(wakeup: SqliteWakeup) -> None:
    with wakeup.listen([REQUEST]) as listener:
        for payload in ("a", "b", "a"):
            wakeup.notify(REQUEST, payload)
        assert listener.wait(5) == [Signal(REQUEST, "a"), Signal(REQUEST, "b")]
        assert listener.wait(0) == []


def test_signals_before_listen_are_not_delivered(wakeup: SqliteWakeup) -> None:
    wakeup.notify(QUEUE, "early")
    with wakeup.listen([QUEUE]) as listener:
        assert listener.wait(0.05) == []


def test_timeout_returns_empty(wakeup: SqliteWakeup) -> None:
    with wakeup.listen([QUEUE]) as listener:
        started = time.monotonic()
        assert listener.wait(0.2) == []
        assert time.monotonic() - started >= 0.15


def test_fileno_turns_readable_on_notify(wakeup: SqliteWakeup) -> None:
    with wakeup.listen([QUEUE]) as listener:
        assert select.select([listener.fileno()], [], [], 0)[0] == []
        wakeup.notify(QUEUE, "m")
        assert select.select([listener.fileno()], [], [], 5)[0] == [listener.fileno()]
        assert listener.wait(0) == [Signal(QUEUE, "m")]


def test_a_full_queue_is_reported_as_a_wildcard(wakeup: SqliteWakeup) -> None:
    """Datagrams past the kernel's queue limit are skipped; the listener says "anything"."""
    with wakeup.listen([REQUEST]) as listener:
        n = _overflow_threshold() + 5
        for i in range(n):
            wakeup.notify(REQUEST, f"r{i}")  # never blocks, never raises, though the queue fills
        signals = listener.wait(5)
    assert Signal(REQUEST, "") in signals
    assert Signal(REQUEST, "r0") in signals


def test_a_dead_listeners_socket_is_removed_by_the_next_notify(wakeup: SqliteWakeup, db: Path) -> None:
    child = _wakeup_children.run("die-listening", f"sqlite:///{db}", QUEUE)
    path = Path(child.stdout.strip())
    assert child.returncode != 0 and path.parent == wakeup.directory
    assert path.exists()  # SIGKILLed: no chance to clean up
    with wakeup.listen([QUEUE]) as alive:
        wakeup.notify(QUEUE, "m")
        assert not path.exists()
        assert alive.wait(5) == [Signal(QUEUE, "m")]
        assert _sockets(wakeup.directory) == [Path(alive.path).name]  # type: ignore[arg-type]


def test_notify_without_listeners_is_a_no_op(wakeup: SqliteWakeup) -> None:
    wakeup.notify(QUEUE, "m")  # no directory yet
    assert not wakeup.directory.exists()  # notify writes nothing
    wakeup.directory.mkdir(mode=0o700)
    wakeup.notify(QUEUE, "m")  # an empty directory
    assert _sockets(wakeup.directory) == []


def test_notify_never_raises(wakeup: SqliteWakeup, caplog: pytest.LogCaptureFixture) -> None:
    listener = wakeup.listen([QUEUE])
    shutil.rmtree(wakeup.directory)  # the directory is gone under a live listener
    wakeup.notify(QUEUE, "m")
    wakeup.directory.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="darkroom.wakeup"):
        wakeup.notify(QUEUE, "m")
        wakeup.notify(QUEUE, "x" * 10_000)  # too large for a datagram: dropped
    assert len(caplog.records) == 2
    listener.close()  # its socket file is gone already: tolerated
    wakeup.close()
    wakeup.notify(QUEUE, "m")  # after close: nothing


def test_a_long_path_falls_back_to_the_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    db = deep / "darkroom.db"
    directory = rendezvous_dir(db)
    assert directory.parent == Path(tempfile.gettempdir())
    assert directory.name.startswith("darkroom-")
    assert rendezvous_dir(db) == directory  # the same in every process
    assert rendezvous_dir(deep / "other.db") != directory
    assert rendezvous_dir(f"{deep}/./darkroom.db") == directory  # from the resolved path
    try:
        wakeup = SqliteWakeup(db)
        with wakeup.listen([QUEUE]) as listener:
            assert len(os.fsencode(listener.path)) <= SOCKET_PATH_MAX  # type: ignore[arg-type]
            wakeup.notify(QUEUE, "m")
            assert listener.wait(5) == [Signal(QUEUE, "m")]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_directory_others_can_enter_is_refused(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = Path(f"{db}.wakeup")
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    wakeup = SqliteWakeup(db)
    with caplog.at_level(logging.WARNING, logger="darkroom.wakeup"):
        listener = wakeup.listen([QUEUE])
    assert "polling only" in caplog.text
    with listener:  # deaf, but usable: wait just times out
        wakeup.notify(QUEUE, "m")
        assert listener.wait(0.05) == []
    assert directory.is_dir() and _sockets(directory) == []  # not ours to remove either


def test_wait_after_close_raises(wakeup: SqliteWakeup) -> None:
    listener = wakeup.listen([QUEUE])
    listener.close()
    listener.close()
    with pytest.raises(ValueError):
        listener.wait(0)


def test_a_stray_file_in_the_directory_is_ignored_or_removed(wakeup: SqliteWakeup) -> None:
    with wakeup.listen([QUEUE]) as listener:
        (wakeup.directory / "README").write_text("not a socket")
        stale = wakeup.directory / "1-abcdef.all.sock"
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bound.bind(str(stale))
        bound.close()  # a socket file with no socket: what a crash leaves
        wakeup.notify(QUEUE, "m")
        assert listener.wait(5) == [Signal(QUEUE, "m")]
    assert _sockets(wakeup.directory) == ["README"]  # the directory stays: not empty


def test_the_directory_is_made_again_after_the_last_listener_left(wakeup: SqliteWakeup) -> None:
    first = wakeup.listen([QUEUE])
    first.close()
    assert not wakeup.directory.exists()
    with wakeup.listen([QUEUE]) as second:  # makes it again
        wakeup.notify(QUEUE, "m")
        assert second.wait(5) == [Signal(QUEUE, "m")]

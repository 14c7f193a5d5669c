"""In-process wake-ups: for an in-memory SQLite store and for tests.

An in-memory database lives in one process, so its listeners do too: a notify walks the
listeners of this ``LocalWakeup`` and hands each matching one the signal under its
condition variable. Nothing is lost and nothing leaves the process; it only works if the
store's writers and its listeners share this one instance.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterable
from typing import Self

from darkroom.wakeup.interface import Signal


class LocalListener:
    """A listener fed directly by :class:`LocalWakeup.notify` (no descriptor)."""

    def __init__(self, owner: LocalWakeup, channels: frozenset[str]) -> None:
        self.channels = channels
        self._owner = owner
        self._cond = threading.Condition()
        self._pending: dict[Signal, None] = {}  # an ordered set: coalesces duplicates
        self._closed = False

    def _put(self, signal: Signal) -> None:
        with self._cond:
            self._pending[signal] = None
            self._cond.notify()

    def wait(self, timeout: float) -> list[Signal]:
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cond:
            if self._closed:
                raise ValueError("wait on a closed listener")
            while not self._pending:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            signals, self._pending = list(self._pending), {}
        return signals

    def fileno(self) -> int:
        raise io.UnsupportedOperation("an in-process listener has no descriptor")

    def close(self) -> None:
        self._owner._remove(self)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalWakeup:
    """Wake-ups between the threads of one process (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: set[LocalListener] = set()

    def notify(self, channel: str, payload: str = "") -> None:
        signal = Signal(channel, payload)
        with self._lock:
            targets = [listener for listener in self._listeners if channel in listener.channels]
        for listener in targets:
            listener._put(signal)

    def listen(self, channels: Iterable[str]) -> LocalListener:
        listener = LocalListener(self, frozenset(channels))
        with self._lock:
            self._listeners.add(listener)
        return listener

    def _remove(self, listener: LocalListener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    def close(self) -> None:
        with self._lock:
            self._listeners.clear()

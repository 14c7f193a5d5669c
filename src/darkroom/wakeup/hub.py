"""Wake-ups for asyncio code: one listener thread per process, fanned out to subscriptions.

An event stream (or a synchronous dialect holding a request open until it finishes)
wants to await "request X changed". Each awaiting a listener of its own would cost a
socket or a database connection per stream, so the API process has one :class:`AsyncHub`:
a daemon thread waits on a single listener (channels ``QUEUE`` and ``REQUEST``) and
hands each signal to the subscriptions for its payload, on their event loops, with
``loop.call_soon_threadsafe``. A signal no one subscribed to costs one dict lookup.

A :class:`Subscription` is a level, not a queue: a change that arrives while its owner
is not awaiting sets a flag, and the next :meth:`Subscription.changed` returns at once.
So the pattern is::

    with hub.subscribe(request_id) as sub:
        while True:
            state = read(request_id)        # after subscribing: nothing is missed
            ...send what changed...
            await sub.changed(SAFETY_POLL_S)  # False on timeout: re-read anyway
"""

from __future__ import annotations

import asyncio
import logging
import select
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Self

from darkroom.wakeup.interface import QUEUE, REQUEST, Listener, Signal, Wakeup

log = logging.getLogger(__name__)

STOP_POLL_S = 0.5
"""The longest the hub's thread waits at a time. :meth:`AsyncHub.stop` wakes it through a
socket pair at once; with a listener that has no descriptor (in-process) stop may take this long."""


class Subscription:
    """Wakes when a signal for its key arrives; a context manager (``with``) that unsubscribes.

    Belongs to the event loop that was running when it was made; await it from there.
    """

    def __init__(self, hub: AsyncHub, channel: str, payload: str, loop: asyncio.AbstractEventLoop) -> None:
        self.channel = channel
        self.payload = payload
        self.loop = loop
        self._hub = hub
        self._event = asyncio.Event()

    def _fire(self) -> None:  # on self.loop
        self._event.set()

    async def changed(self, timeout: float) -> bool:
        """True as soon as a change arrived since the last call (or arrives within
        ``timeout`` seconds); False on timeout."""
        if not self._event.is_set():
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._event.wait()
            except TimeoutError:
                return False
        self._event.clear()
        return True

    def close(self) -> None:
        """Unsubscribe; idempotent."""
        self._hub._unsubscribe(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RequestSubscription = Subscription
"""What :meth:`AsyncHub.subscribe` returns (one class serves requests and the queue)."""


class AsyncHub:
    """The process's bridge from a :class:`Wakeup` to asyncio (see the module docstring).

    Thread-safe. The thread starts on :meth:`start` or on the first subscription; call
    :meth:`stop` at shutdown (it is a daemon thread, so a forgotten stop does not hang
    the interpreter's exit). The hub does not close the ``Wakeup``.
    """

    def __init__(self, wakeup: Wakeup) -> None:
        self._wakeup = wakeup
        self._lock = threading.Lock()  # guards _subs
        self._subs: dict[str, dict[str, set[Subscription]]] = {}  # channel -> payload -> subs
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping: threading.Event | None = None
        self._stop_w: socket.socket | None = None  # wakes the thread to stop
        self._callbacks: dict[str, list[Callable[[Signal], None]]] = {}  # channel -> called in the hub thread

    def start(self) -> None:
        """Start listening (idempotent). When it returns, signals sent afterwards are
        delivered. On PostgreSQL this opens a connection: call it at application startup
        rather than leaving it to the first subscription, which runs on the event loop."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            listener = self._wakeup.listen((QUEUE, REQUEST, *self._callbacks))
            # Socket objects, not raw descriptors: one closed early fails cleanly instead of
            # writing to whatever reused its number; the last reference closes them.
            stop_r, stop_w = socket.socketpair()
            stopping = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(listener, stopping, stop_r), name="darkroom-wakeup-hub", daemon=True
            )
            thread.start()
            self._thread, self._stopping, self._stop_w = thread, stopping, stop_w

    def stop(self) -> None:
        """Stop the thread and close its listener (waits for it, up to ``4 * STOP_POLL_S``).

        Subscriptions stay registered and wake again if the hub is started again."""
        with self._start_lock:
            thread, stopping, stop_w = self._thread, self._stopping, self._stop_w
            self._thread = self._stopping = self._stop_w = None
            if thread is None or stopping is None or stop_w is None:
                return
            stopping.set()
            try:
                stop_w.send(b"x")  # wakes the thread's select at once
            except OSError:
                pass
        thread.join(timeout=STOP_POLL_S * 4)
        stop_w.close()

    def on(self, channel: str, callback: Callable[[Signal], None]) -> None:
        """Call ``callback(signal)`` in the hub's thread for every signal on ``channel`` (for
        cheap, thread-safe bookkeeping such as dropping a cache). Register before ``start``."""
        self._callbacks.setdefault(channel, []).append(callback)

    def subscribe(self, request_id: str) -> Subscription:
        """A subscription to changes of one request; call from a running event loop."""
        return self._subscribe(REQUEST, request_id)

    def subscribe_queue(self, model: str = "") -> Subscription:
        """A subscription to "work may be available" for ``model`` ("" = any model)."""
        return self._subscribe(QUEUE, model)

    async def wait_request(self, request_id: str, timeout: float) -> bool:
        """True as soon as request ``request_id`` changes, False after ``timeout`` seconds.

        A one-shot wait: a change between two calls is missed. A loop should hold a
        :meth:`subscribe` instead."""
        with self.subscribe(request_id) as subscription:
            return await subscription.changed(timeout)

    def _subscribe(self, channel: str, payload: str) -> Subscription:
        subscription = Subscription(self, channel, payload, asyncio.get_running_loop())
        self.start()
        with self._lock:
            self._subs.setdefault(channel, {}).setdefault(payload, set()).add(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            by_payload = self._subs.get(subscription.channel)
            if by_payload is None:
                return
            subs = by_payload.get(subscription.payload)
            if subs is None:
                return
            subs.discard(subscription)
            if not subs:
                del by_payload[subscription.payload]
                if not by_payload:
                    del self._subs[subscription.channel]

    def _run(self, listener: Listener, stopping: threading.Event, stop_r: socket.socket) -> None:
        try:
            while not stopping.is_set():
                try:
                    signals = self._wait(listener, stop_r)
                    if signals:
                        self._dispatch(signals)
                except Exception:  # the hub must outlive a bad wait; subscribers poll meanwhile
                    log.exception("wake-up hub: listener wait failed")
                    stopping.wait(STOP_POLL_S)
        finally:
            listener.close()

    @staticmethod
    def _wait(listener: Listener, stop_r: socket.socket) -> list[Signal]:
        """Wait on the listener's descriptor and the stop socket together, so that stop()
        is prompt; a listener without a descriptor (or between connections) waits in
        slices of STOP_POLL_S instead."""
        try:
            fd = listener.fileno()  # may change between calls (a PostgreSQL reconnect)
        except OSError:
            return listener.wait(STOP_POLL_S)
        poller = select.poll()  # not select(): an API process may hold descriptors past 1024
        poller.register(fd, select.POLLIN)
        poller.register(stop_r, select.POLLIN)
        ready = dict(poller.poll(STOP_POLL_S * 1000))
        if stop_r.fileno() in ready:
            return []
        if ready.get(fd, 0) & ~select.POLLIN:  # an error or hang-up: let the listener deal with it, at its pace
            return listener.wait(STOP_POLL_S)
        return listener.wait(0)

    def _targets(self, signals: Iterable[Signal]) -> set[Subscription]:
        targets: set[Subscription] = set()
        with self._lock:
            for signal in signals:
                by_payload = self._subs.get(signal.channel)
                if not by_payload:
                    continue
                if signal.payload == "":  # "anything on this channel may have changed"
                    for subs in by_payload.values():
                        targets.update(subs)
                    continue
                targets.update(by_payload.get(signal.payload, ()))
                targets.update(by_payload.get("", ()))  # subscribed to the whole channel
        return targets

    def _dispatch(self, signals: list[Signal]) -> None:
        for signal in signals:
            for callback in self._callbacks.get(signal.channel, ()):
                try:
                    callback(signal)
                except Exception:
                    log.exception("wake-up hub: a %s callback failed", signal.channel)
        by_loop: dict[asyncio.AbstractEventLoop, list[Subscription]] = {}
        for subscription in self._targets(signals):
            by_loop.setdefault(subscription.loop, []).append(subscription)
        for loop, subs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_fire_all, subs)
            except RuntimeError:  # that loop is closed: its subscriptions are dead
                log.debug("wake-up hub: dropping %d subscriptions of a closed event loop", len(subs))
                for subscription in subs:
                    self._unsubscribe(subscription)


def _fire_all(subscriptions: list[Subscription]) -> None:
    for subscription in subscriptions:
        subscription._fire()

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
import threading
from collections.abc import Iterable

from darkroom.wakeup.interface import QUEUE, REQUEST, Listener, Signal, Wakeup

log = logging.getLogger(__name__)

STOP_POLL_S = 0.5
"""How long the hub's thread waits per call, hence how long :meth:`AsyncHub.stop` may take."""


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

    def __enter__(self) -> Subscription:
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

    def start(self) -> None:
        """Start listening (idempotent). When it returns, signals sent afterwards are
        delivered. On PostgreSQL this opens a connection: call it at application startup
        rather than leaving it to the first subscription, which runs on the event loop."""
        with self._start_lock:
            if self._thread is not None and self._thread.is_alive():
                return
            listener = self._wakeup.listen((QUEUE, REQUEST))
            stopping = threading.Event()
            thread = threading.Thread(
                target=self._run, args=(listener, stopping), name="darkroom-wakeup-hub", daemon=True
            )
            thread.start()
            self._thread, self._stopping = thread, stopping

    def stop(self) -> None:
        """Stop the thread and close its listener; waits up to about ``STOP_POLL_S``.

        Subscriptions stay registered and wake again if the hub is started again."""
        with self._start_lock:
            thread, stopping = self._thread, self._stopping
            self._thread = self._stopping = None
        if thread is not None and stopping is not None:
            stopping.set()
            thread.join(timeout=STOP_POLL_S * 4)

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

    def _run(self, listener: Listener, stopping: threading.Event) -> None:
        try:
            while not stopping.is_set():
                try:
                    signals = listener.wait(STOP_POLL_S)
                except Exception:  # noqa: BLE001 - the hub must outlive a bad wait; subscribers poll meanwhile
                    log.exception("wake-up hub: listener wait failed")
                    stopping.wait(STOP_POLL_S)
                    continue
                if signals:
                    self._dispatch(signals)
        finally:
            listener.close()

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

"""The wake-up seam: what a backend offers, whatever carries the signal.

A wake-up says "look again", never "here is the new state": a listener that wakes
re-reads the store. So a signal may be duplicated, coalesced, or (rarely) lost without
harm beyond latency: a lost one costs the caller's safety-net poll interval. Signals
carry no ordering or delivery guarantee, and the payload is a hint for routing (which
request, which model), not data.

Two conventions every backend follows:

* Signals sent before :meth:`Wakeup.listen` returned are not delivered: subscribe
  first, then read the state, then wait.
* An empty payload means "any": ``Signal(QUEUE, "")`` is work for any model, and
  ``Signal(REQUEST, "")`` is "any request may have changed". A backend that may have
  lost signals (a PostgreSQL listener that reconnected, a socket whose buffer
  overflowed) reports one such wildcard per subscribed channel instead of staying
  silent, so a subscriber re-reads at once rather than after its poll interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

QUEUE = "queue"
"""Work may be available; payload: the model id ("" = any model)."""

REQUEST = "request"
"""A request changed (claimed, progress, preview, finished...); payload: its id ("" = any)."""

KEYS = "keys"
"""An API key was revoked or its limits changed; payload: its id ("" = any). API processes
drop the keys they remember (``Service.authenticate``'s cache) when they hear it."""


@dataclass(frozen=True)
class Signal:
    """One wake-up: which channel, and the routing hint on it."""

    channel: str
    payload: str


class Listener(Protocol):
    """A subscription to some channels, used by one thread."""

    def wait(self, timeout: float) -> list[Signal]:
        """Block until a signal on a subscribed channel arrives or ``timeout`` seconds pass.

        Returns every pending signal on the subscribed channels, drained and with
        duplicates coalesced (first-arrival order); an empty list on timeout. Never
        raises for transport trouble (it logs and backs off instead, so a caller's
        loop cannot spin); raises ``ValueError`` once the listener is closed.
        """
        ...

    def fileno(self) -> int:
        """A descriptor that turns readable when a signal may be pending, for select().

        After it turns readable call ``wait(0)`` to drain. Raises ``OSError``
        (``io.UnsupportedOperation``) where there is none: the in-process listener, or a
        PostgreSQL listener between connections. The PostgreSQL descriptor changes when
        it reconnects, so read it again after every ``wait``.
        """
        ...

    def close(self) -> None:
        """Stop listening and free the resources; idempotent."""
        ...


class Wakeup(Protocol):
    """The wake-up transport of one store: one per process, shared by its threads."""

    def notify(self, channel: str, payload: str = "") -> None:
        """Wake the listeners of ``channel`` in every process. Thread-safe and cheap.

        Call it after the change it announces has committed. It never raises and never
        blocks for long: trouble is logged, and the wake-up is lost (which costs the
        listeners one safety-net poll interval).
        """
        ...

    def listen(self, channels: Iterable[str]) -> Listener:
        """Subscribe to ``channels``; signals sent after this returns are delivered."""
        ...

    def close(self) -> None:
        """Release what the notifier holds (a connection, a socket); idempotent.

        Close the listeners first; notify after close is a silent no-op.
        """
        ...


def coalesce(signals: Iterable[Signal]) -> list[Signal]:
    """``signals`` without duplicates, in first-arrival order (a signal is a level, not a count)."""
    return list(dict.fromkeys(signals))


def anything(channels: Iterable[str]) -> list[Signal]:
    """The wildcard signals that say "anything on these channels may have changed"."""
    return [Signal(channel, "") for channel in channels]

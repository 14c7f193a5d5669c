"""Cross-process wake-ups: idle workers and event streams wake when something changes.

When a request is submitted, cancelled or requeued, ``notify(QUEUE, model)`` wakes the
idle workers; when one changes (claimed, a progress step, a preview, finished),
``notify(REQUEST, request_id)`` wakes the event streams watching it. Waiters still poll,
slowly, as a safety net: a wake-up is a hint to re-read the store, and a lost one only
costs that poll interval.

One interface (:class:`Wakeup`, :class:`Listener`, :class:`Signal`), one implementation
per backend, picked by :func:`wakeup_for` from the store's URL:

* SQLite file: Unix datagram sockets in a directory beside the database
  (:mod:`darkroom.wakeup.sqlite`);
* PostgreSQL: LISTEN/NOTIFY (:mod:`darkroom.wakeup.postgres`);
* anything else, in-memory SQLite included: in-process only (:mod:`darkroom.wakeup.local`).

:class:`AsyncHub` (:mod:`darkroom.wakeup.hub`) bridges a ``Wakeup`` to asyncio code.
"""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa

from darkroom.wakeup.hub import AsyncHub, RequestSubscription, Subscription
from darkroom.wakeup.interface import KEYS, QUEUE, REQUEST, Listener, Signal, Wakeup
from darkroom.wakeup.local import LocalWakeup
from darkroom.wakeup.postgres import PostgresWakeup  # psycopg itself is imported on first use
from darkroom.wakeup.sqlite import SqliteWakeup

log = logging.getLogger(__name__)

__all__ = [
    "KEYS",
    "QUEUE",
    "REQUEST",
    "AsyncHub",
    "Listener",
    "LocalWakeup",
    "PostgresWakeup",
    "RequestSubscription",
    "Signal",
    "SqliteWakeup",
    "Subscription",
    "Wakeup",
    "sqlite_file",
    "wakeup_for",
]


def sqlite_file(database_url: str) -> str | None:
    """The database file of a SQLite URL, or None for an in-memory database or another backend.

    Handles ``sqlite:///relative.db``, ``sqlite:////absolute.db`` and the URI form
    ``sqlite:///file:path?mode=...&uri=true``.
    """
    url = sa.make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if url.query.get("uri") in ("true", "1", "True") and database.startswith("file:"):
        parts = urlsplit(database)  # SQLAlchemy has moved the URI's query into url.query
        if url.query.get("mode") == "memory" or "memory" in parse_qs(parts.query).get("mode", []):
            return None
        database = parts.path
    if database in ("", ":memory:"):
        return None
    return database


def wakeup_for(database_url: str) -> Wakeup:
    """The wake-up transport for a store URL (SQLAlchemy form).

    One per process per store: share it between the threads (it is thread-safe), and with
    an in-memory store share it between writers and listeners, since a ``LocalWakeup``
    reaches only its own listeners.
    """
    url = sa.make_url(database_url)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = sqlite_file(database_url)
        if path is None:
            return LocalWakeup()
        return SqliteWakeup(path)
    if backend == "postgresql":
        return PostgresWakeup(database_url)
    log.info("no cross-process wake-ups for %s stores; waking in-process only", backend)
    return LocalWakeup()

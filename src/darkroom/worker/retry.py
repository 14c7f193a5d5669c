"""One retry policy for every store write a worker makes.

A worker must not drop a request because the database hiccuped (SQLite busy past its
timeout, a PostgreSQL restart or failover, a connection the pool handed out dead): the
work is done, only the write is missing. Transient database errors are retried with
exponential backoff for up to ``budget_s``; anything else (a bug, a constraint) is
raised at once. Callers decide what a final failure means; the worker loop survives it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa

from darkroom.errors import StoreUnavailable
from darkroom.store import database

log = logging.getLogger(__name__)

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """A database error that may go away by itself: connection lost, server restarting, the
    store's own retries exhausted (``StoreUnavailable``), or, unlike the API's reads, a SQLite
    database locked past its busy timeout: a worker with a finished image waits rather than
    throw the work away."""
    if isinstance(exc, StoreUnavailable):
        return True
    return database.is_transient(exc, dialect="server") or isinstance(exc, sa.exc.TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff from ``first_s``, doubling to at most ``max_s``, for ``budget_s`` in all."""

    budget_s: float = 60.0
    first_s: float = 0.05
    max_s: float = 2.0

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """``fn()``, retried while it raises a transient database error and the budget lasts."""
        deadline = time.monotonic() + self.budget_s
        delay = self.first_s
        while True:
            try:
                return fn()
            except Exception as exc:
                if not is_transient(exc) or time.monotonic() + delay > deadline:
                    raise
                log.warning("%s failed (%s); retrying in %.2f s", what, type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_s)

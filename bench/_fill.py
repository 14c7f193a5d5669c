"""Filling a queue fast for ``bench.queue``'s depth figure, through public ``Store`` methods only.

Runs in worker processes (spawned; the parent's ``sys.path`` and ``PYTHONPATH`` carry over,
so they import the same darkroom as the server under test).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Insert = Callable[[str, str, dict[str, Any]], Any]


def inserter(store: Any) -> Insert:
    """``store.insert_request(key_id, model, payload)`` (returns the Request), or, if that is gone
    from a rebuilt Store, ``submit_request`` with default options (same row, no limits checked)."""
    if hasattr(store, "insert_request"):
        return store.insert_request
    from darkroom.domain import SubmitOptions

    def submit(key_id: str, model: str, payload: dict[str, Any]) -> Any:
        return store.submit_request(key_id, model, payload, options=SubmitOptions()).request

    return submit


def insert_many(url: str, key_id: str, model: str, payload: dict[str, Any], count: int) -> int:
    """Queue ``count`` copies of ``payload`` for ``key_id``, one transaction each; returns ``count``."""
    from darkroom.store import Store

    store = Store(url)
    insert = inserter(store)
    try:
        for _ in range(count):
            insert(key_id, model, payload)
    finally:
        store.close()
    return count

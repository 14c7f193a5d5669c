"""Code that the multi-process store tests run in child processes.

A module of its own, importing only ``darkroom.store``, so that a forkserver child loads it
in milliseconds (the server preloads ``darkroom.store``) without importing pytest or the
test modules.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import ForkServerContext
from typing import Any

from darkroom.store import Store


def context() -> ForkServerContext:
    """forkserver: children fork from a clean, single-threaded server process, not from
    pytest (which may hold threads, e.g. torch's, and open connections), and start fast
    because the server has ``darkroom.store`` imported already; spawn would re-import it
    in every child (seconds)."""
    ctx = multiprocessing.get_context("forkserver")
    assert isinstance(ctx, ForkServerContext)
    ctx.set_forkserver_preload(["darkroom.store"])
    return ctx


def migrate(url: str) -> None:
    store = Store(url)
    store.migrate()
    store.close()


def claim_all(url: str, worker_id: str, models: list[str], start: Any = None) -> list[str]:
    """Claim until the queue is empty; return the ids claimed, in order."""
    store = Store(url)
    if start is not None:
        start.wait()
    claimed = []
    try:
        while (r := store.claim_request(worker_id, models, 60)) is not None:
            claimed.append(r.id)
    finally:
        store.close()
    return claimed


def claim_all_into(url: str, worker_id: str, models: list[str], start: Any, out: Any) -> None:
    out.put((worker_id, claim_all(url, worker_id, models, start)))

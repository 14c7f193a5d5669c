"""Retention: requests are deleted, with every object they left in blob storage, a set time
after they ended (``retention_s``; off by default, so nothing is ever deleted unasked).

Objects go first, then rows: a sweep cut short leaves a request whose images are already
gone (its media URLs answer 404 ``media_not_found``, as for any expired result) rather than
objects no row points to any more. Each API process sweeps (deletes are idempotent, so
replicas sweeping at once only repeat each other's work).
"""

from __future__ import annotations

import logging
import threading
import time

from darkroom.domain import Request
from darkroom.service import BLOB_PREFIX, Service, preview_key

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 60.0
BATCH = 100


def objects_of(request: Request) -> list[str]:
    """Every blob key a request may have left: results, uploaded inputs, previews of each attempt."""
    keys = [m["key"] for m in (request.outcome or {}).get("media", []) if "key" in m]
    refs = [ref.ref for ref in request.spec.inputs] if request.spec else [
        v for v in request.payload.values() if isinstance(v, str)]
    keys += [ref[len(BLOB_PREFIX):] for ref in refs if ref.startswith(BLOB_PREFIX)]
    keys += [preview_key(request.id, attempt) for attempt in range(1, request.attempts + 1)]
    return keys


def sweep(service: Service, now: float | None = None) -> int:
    """Delete the requests that ended more than ``retention_s`` ago; how many went."""
    retention = service.settings.retention_s
    if not retention:
        return 0
    cutoff = (time.time() if now is None else now) - retention
    deleted = 0
    while True:
        expired = service.store.ended_before(cutoff, limit=BATCH)
        if not expired:
            return deleted
        for request in expired:
            for key in objects_of(request):
                service.blobs.delete(key)
        deleted += service.store.delete_requests([r.id for r in expired])
        log.info("retention: deleted %d requests that ended over %.0f s ago", len(expired), retention)


class RetentionSweeper:
    """Runs ``sweep`` every SWEEP_EVERY_S in a daemon thread of the API process."""

    def __init__(self, service: Service, every_s: float = SWEEP_EVERY_S) -> None:
        self.service = service
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            try:
                sweep(self.service)
            except Exception:  # storage or database trouble: the next sweep tries again
                log.warning("retention sweep failed", exc_info=True)
            if self._stop.wait(self.every_s):
                return

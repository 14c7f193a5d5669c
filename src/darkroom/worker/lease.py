"""Keeps a claimed batch's leases alive, reports its progress, and learns of cancels.

One ``BatchLease`` per claimed batch, from the claim until the last of its requests is
published: the lease covers loading inputs, generating, moderating, encoding and storing,
so a slow stage can never let another worker's sweep requeue a request that is being
worked on, and a crash at any point (kill -9) lets every request of the batch be
requeued once the lease lapses.

Its thread does all the store writes of a running batch, off the engine's path: the
engine's step callback only records the step (``report``) and reads two flags
(``stopped``). Progress of every request in the batch goes out in one transaction at
most every ``progress_every_s``; leases are renewed every ``lease_s / 3``. A wake-up
for one of the batch's requests (a client's cancel) makes it look at once, with a read.
A database error here never fails a request: the next tick retries.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from darkroom.store import Store
from darkroom.store.lifecycle import LeaseState

log = logging.getLogger(__name__)


@dataclass
class _Step:
    step: int
    total: int
    preview_step: int | None = None


class BatchLease:
    """Leases, progress and cancel flags of one batch's requests (see the module docstring)."""

    def __init__(self, store: Store, worker_id: str, request_ids: list[str], *, lease_s: float,
                 progress_every_s: float = 0.25) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.progress_every_s = progress_every_s
        self.request_ids = list(request_ids)
        self._live = set(request_ids)  # still ours to renew: not yet ended
        self._cancelled: set[str] = set()
        self._lost: set[str] = set()
        self._ending: set[str] = set()  # being ended by us: their status changes under the lease
        self._pending: dict[str, _Step] = {}
        self._steps: dict[str, tuple[int, int]] = {}  # the latest step reported, flushed or not
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._look = False  # a wake-up asked for a fresh read of the flags
        self._urgent = False  # a report that should go out now, not at the next tick
        self._closed = False
        self._last_flush = 0.0
        self._last_renew = time.monotonic()  # the claim itself set the lease
        self._thread = threading.Thread(target=self._run, name=f"lease-{request_ids[0][:8]}", daemon=True)

    # -- the engine's and the stages' side ---------------------------------------------

    def start(self) -> BatchLease:
        self._thread.start()
        return self

    def stopped(self, request_id: str) -> bool:
        """Stop working on this request: its client cancelled it, or it is not ours any more."""
        return request_id in self._cancelled or request_id in self._lost

    def cancelled(self, request_id: str) -> bool:
        return request_id in self._cancelled

    def lost(self, request_id: str) -> bool:
        return request_id in self._lost

    def report(self, request_id: str, step: int, total: int, *, urgent: bool = False) -> None:
        """Record a step (cheap: no I/O); it goes out with the next flush. ``urgent`` (the
        last step) flushes now instead of at the next tick."""
        with self._lock:
            last = self._pending.get(request_id)
            self._pending[request_id] = _Step(step, total, last.preview_step if last else None)
            self._steps[request_id] = (step, total)
            self._urgent = self._urgent or urgent
        if urgent or time.monotonic() - self._last_flush >= self.progress_every_s:
            self._wake.set()

    def preview(self, request_id: str, step: int) -> None:
        """A preview of ``step`` is stored (it was made on the engine's thread and stored in
        the publish pool, so the engine may be further on now): record its step, never
        moving the reported step back."""
        with self._lock:
            last = self._pending.get(request_id)
            current = (last.step, last.total) if last else self._steps.get(request_id, (step, step))
            self._pending[request_id] = _Step(*current, preview_step=step)
            self._urgent = True
        self._wake.set()

    def poke(self) -> None:
        """A wake-up named one of our requests (a cancel, most likely): look now."""
        self._look = True
        self._wake.set()

    def ending(self, request_id: str) -> None:
        """We are about to end this request (finish, fail, cancel): a renewal that finds it no
        longer processing is our own doing, not another worker's takeover."""
        self._ending.add(request_id)

    def done(self, request_id: str) -> None:
        """The request has ended (or was handed back): stop renewing it. The last one closes the lease."""
        with self._lock:
            self._live.discard(request_id)
            self._pending.pop(request_id, None)
            last = not self._live
        if last:
            self.close()

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(timeout=10)

    # -- the thread -----------------------------------------------------------------------

    def _observe(self, states: dict[str, LeaseState]) -> None:
        for request_id, state in states.items():
            if request_id in self._ending:
                continue
            if not state.owned and request_id not in self._lost:
                self._lost.add(request_id)
                log.warning("lost the lease on %s; another worker owns it now", request_id)
            if state.cancel_requested:
                self._cancelled.add(request_id)

    def _run(self) -> None:
        renew_every = self.lease_s / 3
        while not self._closed:
            now = time.monotonic()
            due = min(self._last_renew + renew_every, self._last_flush + self.progress_every_s if self._pending
                      else float("inf"))
            self._wake.wait(timeout=max(0.0, due - now))
            self._wake.clear()
            if self._closed:
                return
            try:
                self._tick()
            except Exception:  # a database hiccup must not end the lease: the next tick retries
                log.warning("lease upkeep for %s failed; retrying", ", ".join(self.request_ids), exc_info=True)
                self._wake.wait(timeout=min(1.0, renew_every))

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            live = sorted(self._live - self._lost)
            pending: dict[str, _Step] = {}
            if self._pending and (self._urgent or now - self._last_flush >= self.progress_every_s):
                pending, self._pending, self._urgent = self._pending, {}, False
        if not live:
            return
        if pending:
            updates = {rid: (s.step, s.total, s.preview_step) for rid, s in pending.items() if rid in live}
            self._observe(self.store.report_progress_batch(self.worker_id, updates, lease_s=self.lease_s))
            self._last_flush = now
            self._look = False
        if now - self._last_renew >= self.lease_s / 3:
            self._observe(self.store.renew_leases(live, self.worker_id, self.lease_s))
            self._last_renew = now
            self._look = False
        if self._look:
            self._look = False
            self._observe(self.store.lease_states(live, self.worker_id))

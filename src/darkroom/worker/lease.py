"""Keeps a claimed request's lease alive while the engine works, and watches for cancel."""

from __future__ import annotations

import logging
import threading

from darkroom.store import Store

log = logging.getLogger(__name__)


class LeaseKeeper:
    """A background thread renewing one request's lease every ``lease_s / 3``.

    Diffusion jobs are long and of unknown length, so the lease is renewed rather than
    sized to a guess. ``cancelled`` is set when a client asked to cancel; ``lost`` when
    another worker has taken the request over (our lease lapsed), in which case our
    result must be thrown away.
    """

    def __init__(self, store: Store, request_id: str, worker_id: str, lease_s: float) -> None:
        self.store = store
        self.request_id = request_id
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.cancelled = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{request_id[:8]}", daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def observe(self, owned: bool, cancel_requested: bool) -> None:
        if not owned:
            self.lost.set()
        if cancel_requested:
            self.cancelled.set()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                state = self.store.renew_lease(self.request_id, self.worker_id, self.lease_s)
            except Exception:  # a database hiccup must not kill the job; the next renewal retries
                log.warning("lease renewal for %s failed", self.request_id, exc_info=True)
                continue
            self.observe(state.owned, state.cancel_requested)
            if self.lost.is_set():
                log.warning("lost the lease on %s; another worker owns it now", self.request_id)
                return

"""The webhook dispatcher: sends due deliveries, records each attempt, schedules retries.

It runs in the API process (``darkroom serve``), started and stopped by the app's
lifespan, as one polling thread plus a small pool of sender threads: the store is
synchronous, and a slow receiver (up to ``timeout_s``) must hold up one sender, not
the others. Several API replicas may each run one; a delivery is claimed under a lease
before it is sent, so they rarely double-send, and a dispatcher that dies mid-send
leaves its lease to lapse and the delivery to be sent again. At-least-once, then:
receivers de-duplicate on ``webhook-id``, which is the delivery id.

The body is the request's status in the shape of the dialect that submitted it. This
package does not know those shapes: the API layer registers one renderer per dialect
(``register``); a dialect without one gets the default dialect's.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from darkroom import __version__
from darkroom.domain import Request
from darkroom.netguard import NetGuard, UrlNotAllowed, guarded_client
from darkroom.store import Store
from darkroom.store.webhooks import WebhookDelivery
from darkroom.webhooks.schedule import RetrySchedule
from darkroom.webhooks.signing import signature_headers

if TYPE_CHECKING:
    from darkroom.settings import Settings

log = logging.getLogger(__name__)

# A request's status in a dialect's wire shape (a JSON-able dict).
Renderer = Callable[[Request], dict[str, Any]]

DEFAULT_DIALECT = "requestqueue"
MAX_ERROR_CHARS = 500
GONE = 410  # the receiver says the endpoint is gone for good: stop retrying


@dataclass(frozen=True)
class DialectHook:
    render: Renderer
    secret_header: bool = False  # also send the request's secret as X-Webhook-Secret (what BFL does)


@dataclass(frozen=True)
class Attempt:
    """What one POST came to."""

    delivered: bool
    status_code: int | None = None
    error: str | None = None
    permanent: bool = False  # no point retrying


class WebhookDispatcher:
    """Delivers webhooks from the store's ``webhook_deliveries``; see the module docstring."""

    def __init__(
        self,
        store: Store,
        *,
        server_secret: str,
        guard: NetGuard,
        schedule: RetrySchedule | None = None,
        timeout_s: float = 10.0,
        poll_interval_s: float = 1.0,
        concurrency: int = 4,
        client: httpx.Client | None = None,
        owner: str | None = None,
    ) -> None:
        """``server_secret`` signs deliveries of requests without their own secret.
        ``client`` replaces the guarded HTTP client (tests); it is closed by ``stop``."""
        self.store = store
        self.server_secret = server_secret
        self.schedule = schedule or RetrySchedule()
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.concurrency = concurrency
        # The lease covers a whole attempt (rendering, connecting, the timeout) with room to spare.
        self.lease_s = max(30.0, 3 * timeout_s)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._client = client or guarded_client(guard, timeout=timeout_s, follow_redirects=False)
        self._hooks: dict[str, DialectHook] = {}
        self._warned: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_settings(cls, settings: Settings, store: Store, **kwargs: Any) -> WebhookDispatcher:
        """The dispatcher ``settings`` describe (secret, allow-list, schedule, timeouts)."""
        return cls(
            store,
            server_secret=settings.resolved_webhook_secret(),
            guard=NetGuard.from_settings(settings),
            schedule=RetrySchedule.from_settings(settings),
            timeout_s=settings.webhook_timeout_s,
            poll_interval_s=settings.webhook_poll_interval_s,
            concurrency=settings.webhook_concurrency,
            **kwargs,
        )

    def register(self, dialect: str, render: Renderer, *, secret_header: bool = False) -> None:
        """Use ``render`` for the bodies of requests submitted through ``dialect``."""
        self._hooks[dialect] = DialectHook(render, secret_header)

    # -- running ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the polling thread (idempotent)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook-send")
        self._thread = threading.Thread(target=self._run, name="webhook-dispatcher", daemon=True)
        self._thread.start()
        log.info("webhook dispatcher %s started", self.owner)

    def stop(self) -> None:
        """Stop polling, let sends in flight finish (their network operations time out after
        ``timeout_s``), hand back any lease still held, and close the HTTP client: a stopped
        dispatcher is not started again. Blocks; call it from a thread in async code."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        try:
            self.store.release_webhook_deliveries(self.owner)
        except Exception:  # shutting down anyway; the leases lapse on their own
            log.exception("could not release webhook leases")
        self._client.close()

    def _run(self) -> None:
        assert self._pool is not None
        in_flight: set[Future[Any]] = set()
        while not self._stop.is_set():
            in_flight = {f for f in in_flight if not f.done()}
            free = self.concurrency - len(in_flight)
            claimed: list[WebhookDelivery] = []
            if free > 0:
                try:
                    claimed = self.store.claim_webhook_deliveries(self.owner, lease_s=self.lease_s, limit=free)
                except Exception:  # the database may be briefly unavailable: poll again
                    log.exception("could not claim webhook deliveries")
                in_flight.update(self._pool.submit(self.deliver, d) for d in claimed)
            if free <= 0 or len(claimed) == free:
                # Every sender busy, and maybe more due: claim again as soon as one is free.
                wait(in_flight, timeout=self.poll_interval_s, return_when=FIRST_COMPLETED)
            else:
                self._stop.wait(self.poll_interval_s)

    def deliver_due(self) -> int:
        """Claim and send every due delivery in the calling thread; how many were attempted.

        For tests and one-shot use; the running dispatcher does the same from its threads.
        """
        count = 0
        while claimed := self.store.claim_webhook_deliveries(self.owner, lease_s=self.lease_s,
                                                             limit=self.concurrency):
            for delivery in claimed:
                self.deliver(delivery)
            count += len(claimed)
        return count

    # -- one attempt --------------------------------------------------------------------

    def deliver(self, delivery: WebhookDelivery) -> WebhookDelivery | None:
        """Make one attempt at a claimed delivery and record it; the updated delivery, or None
        if the lease was lost meanwhile. Never raises (errors are recorded as attempts)."""
        try:
            attempt = self._attempt(delivery)
        except Exception as exc:  # a renderer bug must not kill the sender; retry after a fix
            log.exception("webhook %s: could not build the delivery", delivery.id)
            attempt = Attempt(delivered=False, error=f"internal error: {type(exc).__name__}: {exc}")
        number = delivery.attempts + 1
        retry_in = None if attempt.delivered or attempt.permanent else self.schedule.delay(number)
        now = time.time()
        try:
            recorded = self.store.record_webhook_attempt(
                delivery.id, self.owner, delivered=attempt.delivered, status_code=attempt.status_code,
                error=attempt.error[:MAX_ERROR_CHARS] if attempt.error else None,
                retry_at=None if retry_in is None else now + retry_in, now=now,
            )
        except Exception:
            log.exception("webhook %s: could not record attempt %d", delivery.id, number)
            return None
        if attempt.delivered:
            log.info("webhook %s (%s of %s) delivered on attempt %d", delivery.id, delivery.event,
                     delivery.request_id, number)
        elif retry_in is not None:
            log.info("webhook %s attempt %d failed (%s); next in %.1f s", delivery.id, number, attempt.error, retry_in)
        else:
            log.warning("webhook %s failed for good after %d attempts: %s", delivery.id, number, attempt.error)
        return recorded

    def _hook(self, dialect: str) -> DialectHook:
        hook = self._hooks.get(dialect)
        if hook is not None:
            return hook
        if dialect not in self._warned:
            self._warned.add(dialect)
            log.warning("no webhook renderer for dialect %r; sending the %s shape", dialect, DEFAULT_DIALECT)
        return self._hooks[DEFAULT_DIALECT]

    def _attempt(self, delivery: WebhookDelivery) -> Attempt:
        request = self.store.get_request(delivery.request_id)
        if request is None or not request.webhook_url:
            return Attempt(delivered=False, error="the request or its webhook_url no longer exists", permanent=True)
        hook = self._hook(request.dialect)
        body = json.dumps(hook.render(request), separators=(",", ":")).encode()
        headers = {
            "content-type": "application/json",
            "user-agent": f"darkroom-webhooks/{__version__}",
            **signature_headers(request.webhook_secret or self.server_secret, delivery.id, int(time.time()), body),
        }
        if hook.secret_header and request.webhook_secret:
            # Only a secret the client chose: the server-wide one must not go to receivers.
            headers["x-webhook-secret"] = request.webhook_secret
        try:
            # Streamed, so that only the start of a (possibly endless) error body is read.
            with self._client.stream("POST", request.webhook_url, content=body, headers=headers) as response:
                code = response.status_code
                if 200 <= code < 300:
                    return Attempt(delivered=True, status_code=code)
                if response.is_redirect:
                    where = response.headers.get("location", "?")
                    error = f"HTTP {code}: redirects are not followed (to {where})"
                else:
                    error = f"HTTP {code}: {_start_of(response)}".rstrip(": ")
        except UrlNotAllowed as exc:
            # Refused before connecting. DNS may change back, so it is retried like any failure.
            return Attempt(delivered=False, error=f"url_not_allowed: {exc.message}")
        except httpx.TimeoutException:
            return Attempt(delivered=False, error=f"timed out after {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            return Attempt(delivered=False, error=f"{type(exc).__name__}: {exc}")
        return Attempt(delivered=False, status_code=code, error=error, permanent=code == GONE)


def _start_of(response: httpx.Response, limit: int = 200) -> str:
    """The first ``limit`` bytes of the body, as text (the rest is never read)."""
    head = b""
    for chunk in response.iter_bytes():
        head += chunk
        if len(head) >= limit:
            break
    return head[:limit].decode("utf-8", "replace").strip()

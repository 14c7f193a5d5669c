"""``Store``: the durable queue's one entry point for the rest of darkroom.

Every method runs in its own transaction and returns domain records (``darkroom.domain``),
never rows. Methods are synchronous: the API calls them from a thread pool, workers
call them directly. Times are float Unix seconds; ``now`` parameters exist for tests and
default to ``time.time()``.

Surviving a database restart or failover: the pool pings connections at checkout, and a
unit of work that fails on a transient error (``database.is_transient``: a dropped
connection, a server that is starting or shutting down) is run again from scratch with
short back-offs for up to ``Store.retry_budget_s``, then raises ``StoreUnavailable``
(HTTP 503). The reads that answer clients, and the submit, do this. Reads are always safe
to run again. A submit is run again only if it failed before its COMMIT was sent (nothing
was applied); if the COMMIT itself fails the request may or may not have been stored, so
it is not run again and raises ``StoreUnavailable`` at once (safe to resend with the same
Idempotency-Key). Worker-side writes (claims, leases, outcomes) are not retried here: the
worker wraps them in its own policy (``darkroom.worker.retry``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from darkroom.domain import ApiKey, GenerationSpec, Page, Request, Status, SubmitOptions, WorkerInfo
from darkroom.errors import Conflict, NotFound, RateLimited, StoreUnavailable
from darkroom.store import database, keys, lifecycle, webhooks, workers
from darkroom.store import requests as requests_
from darkroom.store.lifecycle import LeaseState
from darkroom.store.rows import to_request
from darkroom.store.webhooks import WebhookDelivery
from darkroom.wakeup import KEYS, QUEUE, REQUEST, Wakeup, wakeup_for

if TYPE_CHECKING:
    from darkroom.settings import Settings


log = logging.getLogger(__name__)

T = TypeVar("T")

IDEMPOTENCY_TTL_S = 24 * 3600.0
IN_FLIGHT_RETRY_S = 5  # no way to know when a slot frees up; a short, honest guess

# Re-running a unit of work after a transient database failure: back-offs from RETRY_FIRST_S,
# doubling up to RETRY_MAX_S, within Store.retry_budget_s. A PostgreSQL restart takes a
# second or two; for a longer outage the client's own retry (503 + Retry-After) is a better
# place to wait than a request handler's thread.
RETRY_FIRST_S = 0.05
RETRY_MAX_S = 1.0
STORE_RETRY_AFTER_S = 5  # Retry-After of a StoreUnavailable
# A submit that lost an idempotency race is run again to read the winner (at most this often).
IDEMPOTENCY_RACE_RERUNS = 3


@dataclass(frozen=True)
class Limits:
    """Per-key submission limits in force (None: unlimited)."""

    rate_per_minute: int | None = None
    max_in_flight: int | None = None


@dataclass(frozen=True)
class Submitted:
    request: Request
    created: bool  # False: an idempotent replay of an earlier submit


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _find_replay(conn: sa.Connection, key_id: str, idempotency_key: str, request_hash: str | None,
                 now: float) -> Submitted | None:
    """The earlier submit with this idempotency key within ``IDEMPOTENCY_TTL_S``, as a replay;
    None if there is none (an expired use does not count). Conflict if its body differed."""
    row = requests_.find_idempotent(conn, key_id, idempotency_key)
    if row is None or row.created_at <= now - IDEMPOTENCY_TTL_S:
        return None
    if row.request_hash != request_hash:
        raise Conflict("Idempotency-Key was already used with a different request body",
                       code="idempotency_conflict", field="Idempotency-Key")
    return Submitted(to_request(row), created=False)


def _submit_locked(conn: sa.Connection, key_id: str, model: str, payload: dict[str, Any], *,
                   options: SubmitOptions, request_hash: str | None, limits: Limits, now: float,
                   spec: GenerationSpec | None) -> Submitted:
    """The submit's transaction: lock the key's row, then replay, limits, insert.

    The lock comes first: every check after it sees the committed work of the key's previous
    submit (READ COMMITTED reads what committed before each statement), and no other submit
    of the key can act between a check and the insert. Raises NotFound for an unknown key.
    """
    if not keys.lock_key(conn, key_id):
        raise NotFound(f"no API key {key_id!r}")
    if options.idempotency_key:
        replay = _find_replay(conn, key_id, options.idempotency_key, request_hash, now)
        if replay is not None:
            return replay
        row = requests_.find_idempotent(conn, key_id, options.idempotency_key)
        if row is not None:  # an expired use: forget it so that the key can be used again
            requests_.release_idempotency_key(conn, row.seq)
    if limits.max_in_flight is not None and requests_.count_in_flight(conn, key_id) >= limits.max_in_flight:
        raise RateLimited(f"this key already has {limits.max_in_flight} requests queued or processing",
                          retry_after=IN_FLIGHT_RETRY_S)
    if limits.rate_per_minute is not None:
        recent = requests_.created_since(conn, key_id, now - 60.0)
        if len(recent) >= limits.rate_per_minute:
            # The request that must leave the 60 s window before one more fits.
            frees_at = recent[len(recent) - limits.rate_per_minute] + 60.0
            raise RateLimited(f"this key may submit {limits.rate_per_minute} requests per minute",
                              retry_after=math.ceil(frees_at - now))
    request = requests_.insert_request(conn, key_id, model, payload, now, options=options,
                                       request_hash=request_hash, spec=spec)
    return Submitted(request, created=True)


class Store:
    """The request queue, API keys and worker registry, over SQLite or PostgreSQL."""

    #: How long a read or a submit keeps re-running after transient database failures
    #: before it raises StoreUnavailable (seconds; an instance may set its own).
    retry_budget_s: float = 10.0

    def __init__(self, url: str, *, wakeup: Wakeup | None = None, **engine_kwargs: Any) -> None:
        """Connect lazily to ``url`` (a SQLAlchemy URL: ``sqlite:///path`` or
        ``postgresql+psycopg://...``). Call ``migrate()`` before first use.

        ``wakeup`` carries the store's change signals to other processes (default: the
        one for this backend, ``darkroom.wakeup.wakeup_for``). Every method that queues
        work or changes a request signals after its transaction commits, so a waiter that
        wakes and reads sees the change.
        """
        self.url = url
        self._engine = database.create_engine(url, **engine_kwargs)
        self.wakeup: Wakeup = wakeup if wakeup is not None else wakeup_for(url)

    @classmethod
    def from_settings(cls, settings: Settings) -> Store:
        """The store ``settings`` describe; creates the data directory (and the SQLite file's).

        The pool settings (``db_pool_size``, ``db_max_overflow``, ``db_pool_timeout_s``)
        apply to PostgreSQL; ``database.create_engine`` ignores them for SQLite.
        """
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        url = settings.resolved_database_url()
        path = database.sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return cls(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow,
                   pool_timeout=settings.db_pool_timeout_s)

    def __repr__(self) -> str:
        return f"Store({sa.make_url(self.url).render_as_string(hide_password=True)!r})"

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._engine.dialect.name

    def migrate(self) -> None:
        """Bring the schema to the newest revision. Idempotent; safe from concurrent processes."""
        database.migrate(self._engine)

    def close(self) -> None:
        """Close pooled connections. The store may be used again afterwards (it reconnects)."""
        self._engine.dispose()

    def _changed(self, *request_ids: str) -> None:
        for request_id in request_ids:
            self.wakeup.notify(REQUEST, request_id)

    def _queued(self, model: str) -> None:
        self.wakeup.notify(QUEUE, model)

    def _write(self) -> AbstractContextManager[sa.Connection]:
        return database.write_transaction(self._engine)

    def _read(self) -> AbstractContextManager[sa.Connection]:
        return database.read_transaction(self._engine)

    def _retrying(self, what: str, unit: Callable[[], T]) -> T:
        """``unit()``, run again from scratch while it fails with a transient database error
        (``database.is_transient``) and ``retry_budget_s`` lasts; then StoreUnavailable.

        ``unit`` must be a whole transaction that is safe to run twice: a read, or a write
        through ``database.run_write``, whose ``CommitUncertain`` (the COMMIT itself failed)
        is never run again and becomes StoreUnavailable at once. A pool that had no free
        connection within its ``pool_timeout`` has been waited for already: StoreUnavailable
        at once. Other errors (domain errors, constraint violations, bugs) propagate unchanged.
        """
        deadline = time.monotonic() + self.retry_budget_s
        delay = RETRY_FIRST_S
        while True:
            try:
                return unit()
            except database.CommitUncertain as exc:
                raise StoreUnavailable(f"{what}: the database connection failed while committing, so the "
                                       f"change may or may not have been saved; it is safe to retry "
                                       f"with the same Idempotency-Key", retry_after=STORE_RETRY_AFTER_S) from exc
            except sa.exc.TimeoutError as exc:  # the pool's, not a statement's
                raise StoreUnavailable(f"{what}: no database connection free (the pool is exhausted)",
                                       retry_after=STORE_RETRY_AFTER_S) from exc
            except sa.exc.DBAPIError as exc:
                if not database.is_transient(exc, self.backend):
                    raise
                reason = f"{type(exc.orig).__name__}: {str(exc.orig).strip().partition(chr(10))[0]}"
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"{what}: the database is unavailable ({reason})",
                                           retry_after=STORE_RETRY_AFTER_S) from exc
                log.warning("%s failed (%s); retrying in %.2f s", what, reason, delay)
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _reading(self, what: str, body: Callable[[sa.Connection], T]) -> T:
        """``body(conn)`` in a read transaction, re-run on transient failures (``_retrying``)."""

        def unit() -> T:
            with self._read() as conn:
                return body(conn)

        return self._retrying(what, unit)

    def _writing(self, what: str, body: Callable[[sa.Connection], T]) -> T:
        """``body(conn)`` in a write transaction, re-run only on transient failures before its
        COMMIT was sent (``_retrying``); a failed COMMIT raises StoreUnavailable."""
        return self._retrying(what, lambda: database.run_write(self._engine, body))

    # -- API keys ---------------------------------------------------------------------

    def create_key(self, name: str, now: float | None = None) -> tuple[ApiKey, str]:
        """Create a key; return it and its secret, which is not stored and cannot be shown again.

        Raises InvalidField (empty name), Conflict (an active key has that name).
        """
        with self._write() as conn:
            return keys.create_key(conn, name, _now(now))

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is, else None (unknown or revoked)."""
        return self._reading("authenticating", lambda conn: keys.authenticate(conn, secret))

    def list_keys(self) -> list[ApiKey]:
        """All keys, revoked included, oldest first."""
        return self._reading("listing keys", keys.list_keys)

    def revoke_key(self, id_or_name: str, now: float | None = None) -> ApiKey:
        """Revoke by id or active name; return the key. Raises NotFound."""
        with self._write() as conn:
            key = keys.revoke_key(conn, id_or_name, _now(now))
        self.wakeup.notify(KEYS, key.id)  # API processes forget it now, not when their cache expires
        return key

    def update_key(self, id_or_name: str, **changes: Any) -> ApiKey:
        """Set limits (``rate_per_minute``, ``max_in_flight``; None = server default),
        ``allow_high_priority`` and ``admin`` of an active key. Raises NotFound, InvalidField."""
        with self._write() as conn:
            key = keys.update_key(conn, id_or_name, **changes)
        self.wakeup.notify(KEYS, key.id)
        return key

    # -- requests ---------------------------------------------------------------------

    def submit_request(
        self,
        key_id: str,
        model: str,
        payload: dict[str, Any],
        *,
        options: SubmitOptions,
        request_hash: str | None = None,
        limits: Limits | None = None,
        only_existing: bool = False,
        now: float | None = None,
        spec: GenerationSpec | None = None,
    ) -> Submitted | None:
        """Queue a request with idempotency and per-key limits checked in the same transaction.

        - The same idempotency key within ``IDEMPOTENCY_TTL_S`` returns the original request
          (``created`` False) if ``request_hash`` matches, else raises Conflict
          (``idempotency_conflict``). An older use of the key is forgotten.
        - ``only_existing``: only look for such a replay; None if there is none.
        - Over ``limits.max_in_flight`` (queued + processing) or ``limits.rate_per_minute``
          (created in the last 60 s) raises RateLimited with a Retry-After estimate.
        - ``spec``: the generation spec (stored with its shape key for batching).
        - Raises NotFound for an unknown key; StoreUnavailable if the database stays
          unreachable, or failed while committing (then the request may exist: resend with
          the same idempotency key to find out).

        Concurrent submits of one key are serialized by a lock on the key's row, taken
        before the idempotency lookup and the limit checks (``keys.lock_key``), so that N
        concurrent submits cannot all pass a limit, and the second of two submits with one
        idempotency key sees the first and replays it. Other keys never wait for it.
        """
        submitted = self._submit(key_id, model, payload, options=options, request_hash=request_hash,
                                 limits=limits or Limits(), only_existing=only_existing, now=_now(now), spec=spec)
        if submitted is not None and submitted.created:
            self._queued(model)
        return submitted

    def _submit(self, key_id: str, model: str, payload: dict[str, Any], *, options: SubmitOptions,
                request_hash: str | None, limits: Limits, only_existing: bool, now: float,
                spec: GenerationSpec | None) -> Submitted | None:
        """One submit as one unit of work, run again on transient failures before its COMMIT.

        ``only_existing`` is a pure read (the service's replay check before it uploads input
        images): no lock, no write transaction. A real submit that still loses an idempotency
        race (``IdempotencyKeyTaken``: only possible if a request was inserted without the
        key's lock) is run again: its fresh lookup finds the winner and answers a replay or
        ``idempotency_conflict``, never "no API key".
        """
        if only_existing:
            idempotency_key = options.idempotency_key
            if not idempotency_key:
                return None
            return self._reading("looking up an idempotency key",
                                 lambda conn: _find_replay(conn, key_id, idempotency_key, request_hash, now))

        def unit(conn: sa.Connection) -> Submitted:
            return _submit_locked(conn, key_id, model, payload, options=options, request_hash=request_hash,
                                  limits=limits, now=now, spec=spec)

        for rerun in range(IDEMPOTENCY_RACE_RERUNS + 1):
            try:
                return self._writing("submitting a request", unit)
            except requests_.IdempotencyKeyTaken:
                if rerun == IDEMPOTENCY_RACE_RERUNS:
                    raise
                log.info("a submit for key %s lost an idempotency race; reading the winner", key_id)
        raise AssertionError("unreachable")

    def insert_request(self, key_id: str, model: str, payload: dict[str, Any], now: float | None = None) -> Request:
        """Queue a new request and return it (status queued). Raises NotFound for an unknown key."""
        with self._write() as conn:
            request = requests_.insert_request(conn, key_id, model, payload, _now(now))
        self._queued(model)
        return request

    def get_request(self, request_id: str, key_id: str | None = None) -> Request | None:
        """The request, or None; with ``key_id``, None for another key's request too."""
        return self._reading("reading a request", lambda conn: requests_.get_request(conn, request_id, key_id))

    def list_requests(
        self,
        key_id: str,
        model: str | None = None,
        status: Status | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page:
        """A page of the key's requests, newest first; ``total`` counts all matches."""
        return self._reading("listing requests",
                             lambda conn: requests_.list_requests(conn, key_id, model, status, limit, offset))

    def ended_before(self, cutoff: float, limit: int = 100) -> list[Request]:
        """Up to ``limit`` requests that ended before ``cutoff`` (Unix seconds), oldest first."""
        return self._reading("listing ended requests", lambda conn: requests_.ended_before(conn, cutoff, limit))

    def delete_requests(self, request_ids: list[str]) -> int:
        """Delete these requests (ended ones only) with their webhook deliveries; how many went."""
        with self._write() as conn:
            return requests_.delete_requests(conn, request_ids)

    def ping(self) -> None:
        """One trivial round trip (``SELECT 1``): the database answers; StoreUnavailable if it
        does not within the retry budget."""
        self._reading("pinging the database", lambda conn: conn.execute(sa.text("SELECT 1")).scalar_one())

    def count_requests(self) -> int:
        """Number of stored requests, every key and state."""
        return self._reading("counting requests", requests_.count_requests)

    def queue_position(self, request_id: str) -> int | None:
        """Queued requests for the same model ahead of this one (0-based); None if not queued."""
        return self._reading("reading a queue position", lambda conn: requests_.queue_position(conn, request_id))

    # -- lifecycle (workers and clients) --------------------------------------------------

    def claim_request(
        self, worker_id: str, models: list[str], lease_s: float, now: float | None = None
    ) -> Request | None:
        """Atomically take the next queued request for ``models``; None if there is none.

        Never hands one request to two claimers, across threads and processes.
        """
        claimed = self.claim_batch(worker_id, models, lease_s, max_batch=1, now=now)
        return claimed[0] if claimed else None

    def claim_batch(
        self,
        worker_id: str,
        models: list[str],
        lease_s: float,
        *,
        max_batch: int,
        shape_key: str | None = None,
        now: float | None = None,
    ) -> list[Request]:
        """Atomically take the next queued request and up to ``max_batch - 1`` more that can share its
        pipeline call (``lifecycle.claim_batch``), in queue order; [] if nothing is queued.
        ``shape_key``: take only requests of that shape (to fill a batch)."""
        if not models:
            return []
        with self._write() as conn:
            claimed = lifecycle.claim_batch(conn, worker_id, models, lease_s, _now(now), max_batch=max_batch,
                                            shape_key=shape_key)
        self._changed(*(r.id for r in claimed))
        return claimed

    def has_queued(self, models: list[str]) -> bool:
        """Whether anything is queued for ``models`` (a read; no lock taken)."""
        return self._reading("looking for queued work", lambda conn: requests_.has_queued(conn, models))

    def renew_lease(self, request_id: str, worker_id: str, lease_s: float, now: float | None = None) -> LeaseState:
        """Extend the lease; falsy LeaseState if the worker no longer owns the request."""
        with self._write() as conn:
            return lifecycle.renew_lease(conn, request_id, worker_id, lease_s, _now(now))

    def renew_leases(
        self, request_ids: list[str], worker_id: str, lease_s: float, now: float | None = None
    ) -> dict[str, LeaseState]:
        """``renew_lease`` for a batch, in one UPDATE."""
        with self._write() as conn:
            return lifecycle.renew_leases(conn, request_ids, worker_id, lease_s, _now(now))

    def lease_states(self, request_ids: list[str], worker_id: str) -> dict[str, LeaseState]:
        """What ``renew_leases`` would answer, read without writing."""
        with self._read() as conn:
            return lifecycle.lease_states(conn, request_ids, worker_id)

    def report_progress(
        self,
        request_id: str,
        worker_id: str,
        step: int,
        total: int,
        *,
        lease_s: float,
        now: float | None = None,
        preview_step: int | None = None,
    ) -> LeaseState:
        """Record progress and renew the lease in one UPDATE; same answer as renew_lease.

        ``preview_step``, when given, records the step of the preview image just stored.
        """
        with self._write() as conn:
            state = lifecycle.report_progress(conn, request_id, worker_id, step, total, lease_s, _now(now),
                                              preview_step=preview_step)
        self._changed(request_id)
        return state

    def report_progress_batch(
        self,
        worker_id: str,
        updates: dict[str, tuple[int, int, int | None]],
        *,
        lease_s: float,
        now: float | None = None,
    ) -> dict[str, LeaseState]:
        """``report_progress`` for several requests in one transaction: ``updates`` maps each id to
        (step, total, preview_step or None)."""
        now = _now(now)
        with self._write() as conn:
            states = {rid: lifecycle.report_progress(conn, rid, worker_id, step, total, lease_s, now,
                                                     preview_step=preview)
                      for rid, (step, total, preview) in updates.items()}
        self._changed(*updates)
        return states

    def finish_request(
        self, request_id: str, worker_id: str, outcome: dict[str, Any], now: float | None = None,
        *, steps: int | None = None,
    ) -> Request | None:
        """processing -> success by the lease owner; None if it does not own it (any more).

        ``steps``: the job's step count, the progress total if no progress report got through.
        A cancel flagged before this call wins: the request ends cancelled and that record
        is returned (check its status)."""
        with self._write() as conn:
            result = lifecycle.finish_request(conn, request_id, worker_id, outcome, _now(now), steps)
        self._changed(request_id)
        return result

    def fail_request(
        self, request_id: str, worker_id: str, error: dict[str, Any], now: float | None = None
    ) -> Request | None:
        """processing -> failed by the lease owner, ``error`` = {"code", "message"}; else None."""
        with self._write() as conn:
            result = lifecycle.fail_request(conn, request_id, worker_id, error, _now(now))
        self._changed(request_id)
        return result

    def cancel_request(self, request_id: str, key_id: str, now: float | None = None) -> Request:
        """Cancel (queued) or flag for cancelling (processing); return the fresh record.

        Raises Conflict if it already ended, RequestNotFound if unknown or another key's.
        """
        with self._write() as conn:
            result = lifecycle.cancel_request(conn, request_id, key_id, _now(now))
        self._changed(request_id)
        return result

    def mark_cancelled(self, request_id: str, worker_id: str, now: float | None = None) -> Request | None:
        """processing -> cancelled by the lease owner; None if it does not own it."""
        with self._write() as conn:
            result = lifecycle.mark_cancelled(conn, request_id, worker_id, _now(now))
        self._changed(request_id)
        return result

    def requeue_stalled(
        self, max_attempts: int, now: float | None = None, *, dead_after_s: float | None = None
    ) -> tuple[list[str], list[str]]:
        """Requeue (or fail with worker_lost) requests whose lease lapsed, or, with ``dead_after_s``,
        whose worker has not heartbeated for that long; (requeued, failed) ids."""
        now = _now(now)
        with self._write() as conn:
            dead = workers.silent_workers(conn, now - dead_after_s) if dead_after_s else []
            requeued, failed = lifecycle.requeue_stalled(conn, max_attempts, now, dead_owners=dead)
            for worker_id in dead:
                workers.remove_worker(conn, worker_id)
        if requeued:
            self.wakeup.notify(QUEUE, "")
        self._changed(*requeued, *failed)
        return requeued, failed

    def release_worker(self, worker_id: str, max_attempts: int, now: float | None = None) -> tuple[list[str], list[str]]:
        """A worker is known dead (its supervisor saw it exit): requeue what it held at once (or fail
        it with worker_lost after ``max_attempts``) and forget the worker; (requeued, failed) ids."""
        with self._write() as conn:
            requeued, failed = lifecycle.requeue_stalled(conn, max_attempts, _now(now), dead_owners=[worker_id])
            workers.remove_worker(conn, worker_id)
        if requeued:
            self.wakeup.notify(QUEUE, "")
        self._changed(*requeued, *failed)
        return requeued, failed

    # -- workers ----------------------------------------------------------------------

    def register_worker(self, worker_id: str, models: list[str], now: float | None = None,
                        **details: Any) -> None:
        """Record a worker and the models it serves (also a heartbeat); ``details``: hostname,
        pid, device, capacity."""
        with self._write() as conn:
            workers.register_worker(conn, worker_id, models, _now(now), details)

    def heartbeat_worker(self, worker_id: str, now: float | None = None, *, current: list[str] | None = None,
                         draining: bool | None = None) -> bool:
        """Note the worker is alive (and what it holds, whether it drains); False if it is not registered."""
        with self._write() as conn:
            return workers.heartbeat_worker(conn, worker_id, _now(now), current=current, draining=draining)

    def list_workers(self) -> list[WorkerInfo]:
        """Every registered worker (the operator's view), the most recently started first."""
        with self._read() as conn:
            return workers.list_workers(conn)

    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker (on clean shutdown)."""
        with self._write() as conn:
            workers.remove_worker(conn, worker_id)

    def active_workers(self, model: str | None = None, within_s: float = 30.0, now: float | None = None) -> int:
        """Workers that heartbeated within ``within_s`` seconds and serve ``model`` (if given)."""
        now = _now(now)
        return self._reading("counting workers", lambda conn: workers.active_workers(conn, model, within_s, now))

    # -- webhook deliveries -----------------------------------------------------------

    def claim_webhook_deliveries(
        self, owner: str, *, lease_s: float, limit: int, now: float | None = None
    ) -> list[WebhookDelivery]:
        """Lease up to ``limit`` due webhook deliveries to ``owner``; [] if none is due.

        Looks first in a read transaction, so an idle dispatcher's poll takes no write lock.
        """
        now = _now(now)
        with self._read() as conn:
            if not webhooks.any_due(conn, now):
                return []
        with self._write() as conn:
            return webhooks.claim_deliveries(conn, owner, lease_s, limit, now)

    def record_webhook_attempt(
        self,
        delivery_id: str,
        owner: str,
        *,
        delivered: bool,
        status_code: int | None = None,
        error: str | None = None,
        retry_at: float | None = None,
        now: float | None = None,
    ) -> WebhookDelivery | None:
        """Record an attempt by the lease holder: delivered, retry at ``retry_at``, or (neither)
        failed for good. None if ``owner`` lost the lease to another dispatcher."""
        with self._write() as conn:
            return webhooks.record_attempt(conn, delivery_id, owner, delivered=delivered, status_code=status_code,
                                           error=error, retry_at=retry_at, now=_now(now))

    def release_webhook_deliveries(self, owner: str, now: float | None = None) -> int:
        """Give up ``owner``'s leases on pending deliveries (clean shutdown); how many."""
        with self._write() as conn:
            return webhooks.release_deliveries(conn, owner, _now(now))

    def list_webhook_deliveries(self, request_id: str) -> list[WebhookDelivery]:
        """A request's webhook deliveries, oldest first."""
        return self._reading("listing webhook deliveries", lambda conn: webhooks.list_deliveries(conn, request_id))

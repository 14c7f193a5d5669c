"""Domain records shared by every layer: plain, frozen, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Status(StrEnum):
    """A request's lifecycle. Values are the contract's wire words."""

    QUEUED = "queued"  # stored, waiting for a worker
    PROCESSING = "processing"  # claimed by a worker under a lease
    SUCCESS = "success"  # finished; outcome holds the media URLs
    FAILED = "failed"  # finished; outcome holds an error code and message
    CANCELLED = "cancelled"  # stopped on a client's request

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[Status] = frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED})

# The legal transitions, enforced by the store's one transition function.
# processing -> queued is recovery only: a worker's lease lapsed and the request is retried.
TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.QUEUED: frozenset({Status.PROCESSING, Status.CANCELLED}),
    Status.PROCESSING: frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED, Status.QUEUED}),
    Status.SUCCESS: frozenset(),
    Status.FAILED: frozenset(),
    Status.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class ApiKey:
    """An API key as stored: never the secret itself, only its hash."""

    id: str
    name: str
    prefix: str  # the first characters of the secret, to tell keys apart in listings
    created_at: float
    revoked_at: float | None = None
    rate_per_minute: int | None = None  # operator-set; None: the server default
    max_in_flight: int | None = None  # queued + processing at once; None: the server default
    allow_high_priority: bool = False

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Request:
    """One generation request and everything known about it."""

    id: str
    key_id: str
    model: str
    payload: dict[str, Any]
    status: Status
    created_at: float
    updated_at: float
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    progress_step: int | None = None
    progress_total: int | None = None
    cancel_requested: bool = False
    outcome: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    seq: int = 0  # insertion order; the queue is FIFO on it within a priority and key turn
    priority: int = 1  # Priority values: 0 high, 1 normal, 2 low
    idempotency_key: str | None = None
    dialect: str = "requestqueue"  # the API dialect that submitted it: shapes its webhook body
    base_url: str | None = None  # the URL the client reached us on, for links in webhooks
    webhook_url: str | None = None
    webhook_secret: str | None = None
    preview_step: int | None = None  # denoising step of the latest preview image


class Priority(IntEnum):
    """Queue priority; lower values are served first."""

    HIGH = 0  # only keys the operator allows
    NORMAL = 1  # the default
    LOW = 2  # batch work that may wait


@dataclass(frozen=True)
class SubmitOptions:
    """How a request is queued, beside its payload. Every dialect fills this in."""

    priority: Priority = Priority.NORMAL
    idempotency_key: str | None = None
    dialect: str = "requestqueue"
    base_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


@dataclass(frozen=True)
class Page:
    """A page of a listing and the size of the whole listing."""

    items: list[Any] = field(default_factory=list)
    total: int = 0

"""Domain records shared by every layer: plain, frozen, no I/O."""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
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
    admin: bool = False  # may read the operator's routes (/api/v1/admin/...)

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class InputRef:
    """One input image: where it is (a blob reference or a URL) and, when known, its size."""

    field: str  # input_image, input_image_2, ...
    ref: str  # "darkroom-blob:<key>" for uploads, else an http(s) URL
    width: int | None = None  # known for uploads (decoded at submit); None for URLs
    height: int | None = None


@dataclass(frozen=True)
class GenerationSpec:
    """One request's generation, as the worker runs it."""

    model: str
    prompt: str
    width: int  # output size in pixels (about 1 MP at the aspect ratio)
    height: int
    steps: int
    guidance: float
    seed: int  # always set: drawn at submit when the client sent none
    seed_random: bool  # the client asked for a random seed (seed 0 / null / absent)
    output_format: str  # jpeg | png
    safety_tolerance: int
    prompt_upsampling: bool
    inputs: tuple[InputRef, ...] = ()

    @property
    def editing(self) -> bool:
        return bool(self.inputs)

    def shape_key(self) -> str:
        """Equal for requests that can share one pipeline call (see the module docstring).

        An input image fetched from a URL has no known size until the worker downloads it,
        so such a request gets a key of its own (it runs alone).
        """
        parts: list[str] = [self.model, f"{self.width}x{self.height}", str(self.steps), repr(float(self.guidance))]
        for ref in self.inputs:
            if ref.width is None or ref.height is None:
                return "solo:" + hashlib.sha256(repr(self).encode()).hexdigest()[:32]
            parts.append(f"{ref.width}x{ref.height}")
        key = "|".join(parts)
        # The column is 200 wide; a long model id is hashed rather than truncated (equal stays equal).
        return key if len(key) <= 200 else "sha256:" + hashlib.sha256(key.encode()).hexdigest()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GenerationSpec:
        fields = dict(data)
        fields["inputs"] = tuple(InputRef(**ref) for ref in fields.get("inputs", ()))
        return cls(**fields)


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
    spec: GenerationSpec | None = None  # fixed at submit (darkroom.spec); None for rows from before it existed
    shape_key: str | None = None  # requests with equal keys may share one pipeline call
    turn: int = 0  # round-robin place within the key's queued requests (the claim orders by it)


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
class WorkerInfo:
    """A registered worker, as the operator's view shows it."""

    id: str
    models: list[str]
    started_at: float
    heartbeat_at: float
    hostname: str = ""
    pid: int = 0
    device: str = ""
    capacity: int = 1  # requests per batch (max_batch)
    current: list[str] = field(default_factory=list)  # requests it holds, as of its last heartbeat
    draining: bool = False  # finishing what it holds, claiming nothing new


@dataclass(frozen=True)
class Page:
    """A page of a listing and the size of the whole listing."""

    items: list[Any] = field(default_factory=list)
    total: int = 0

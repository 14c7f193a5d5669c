"""Result types: frozen records built from the wire's JSON, plus the status words.

The SDK keeps its own small ``Status`` mirror rather than importing the server's,
so ``darkroom.client`` needs nothing but httpx and the standard library.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ._errors import INVALID_RESPONSE, DarkroomError


class Status(StrEnum):
    """A request's lifecycle; values are the contract's wire words."""

    QUEUED = "queued"  # stored, waiting for a worker
    PROCESSING = "processing"  # a worker is generating it
    SUCCESS = "success"  # finished; the outcome holds the media URLs
    FAILED = "failed"  # finished; the outcome holds an error code and message
    CANCELLED = "cancelled"  # stopped on a client's request

    @property
    def is_terminal(self) -> bool:
        """True for the three words after which a request never changes again."""
        return self in _TERMINAL


_TERMINAL = frozenset({Status.SUCCESS, Status.FAILED, Status.CANCELLED})
_WORDS = frozenset(s.value for s in Status)


@dataclass(frozen=True)
class Progress:
    """How far a processing request has come: denoising ``step`` of ``total``."""

    step: int
    total: int

    @property
    def fraction(self) -> float:
        """``step / total`` in [0, 1]; 0.0 while ``total`` is unknown."""
        return min(1.0, self.step / self.total) if self.total > 0 else 0.0


@dataclass(frozen=True)
class RequestStatus:
    """One request as the server last reported it.

    Fields mirror the wire's status object; the answer to a submit carries only
    some of them, the others are ``None``. ``raw`` holds the JSON exactly as received,
    extra fields included.
    """

    request_id: str
    model: str
    status: Status
    created_at: float | None = None
    updated_at: float | None = None
    queued_at: float | None = None
    org_id: str | None = None
    is_public: bool | None = None
    payload: Mapping[str, Any] | None = None
    outcome: Mapping[str, Any] | None = None
    progress: Progress | None = None  # while processing, when the engine reports steps
    queue_position: int | None = None  # while queued, when the server reports it
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    # Equal records have equal (request_id, status, updated_at); the mapping fields
    # would make the generated hash fail.
    def __hash__(self) -> int:
        return hash((self.request_id, self.status, self.updated_at))

    @classmethod
    def from_json(cls, data: object) -> RequestStatus:
        """Build from a decoded status object.

        Raises:
            DarkroomError: (code ``"invalid_response"``) when ``request_id`` or a
                known ``status`` word is missing.
        """
        if not isinstance(data, dict):
            raise _invalid(f"expected a status object, got {type(data).__name__}")
        request_id = data.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise _invalid("status object without a request_id")
        word = data.get("status")
        if word not in _WORDS:
            raise _invalid(f"unknown request status {word!r}")
        status = Status(word)
        return cls(
            request_id=request_id,
            model=str(data.get("model") or ""),
            status=status,
            created_at=_number(data.get("created_at")),
            updated_at=_number(data.get("updated_at")),
            queued_at=_number(data.get("queued_at")),
            org_id=data.get("org_id") if isinstance(data.get("org_id"), str) else None,
            is_public=data.get("is_public") if isinstance(data.get("is_public"), bool) else None,
            payload=_mapping(data.get("payload")),
            outcome=_mapping(data.get("outcome")),
            progress=_progress(data.get("progress")),
            queue_position=_int(data.get("queue_position")),
            raw=data,
        )

    @property
    def done(self) -> bool:
        """True once the request is ``success``, ``failed`` or ``cancelled``."""
        return self.status.is_terminal

    @property
    def succeeded(self) -> bool:
        """True when the request finished with ``success``."""
        return self.status is Status.SUCCESS

    @property
    def urls(self) -> tuple[str, ...]:
        """The result images' URLs, in order; empty unless the request succeeded."""
        media = (self.outcome or {}).get("media_urls")
        if not isinstance(media, list):
            return ()
        return tuple(m["url"] for m in media if isinstance(m, dict) and isinstance(m.get("url"), str))

    @property
    def error_code(self) -> str | None:
        """The outcome's error code for a failed or cancelled request, else ``None``."""
        code = self._error().get("code")
        if isinstance(code, str) and code:
            return code
        return "cancelled" if self.status is Status.CANCELLED else None

    @property
    def error_message(self) -> str | None:
        """The outcome's human-readable error message, if any."""
        message = self._error().get("message")
        return message if isinstance(message, str) and message else None

    def _error(self) -> Mapping[str, Any]:
        error = (self.outcome or {}).get("error")
        return error if isinstance(error, dict) else {}


@dataclass(frozen=True)
class RequestPage:
    """One page of ``Client.list``: the requests and the size of the whole listing."""

    requests: tuple[RequestStatus, ...]
    total: int
    limit: int
    offset: int

    @property
    def has_more(self) -> bool:
        """True when requests remain after this page."""
        return self.offset + len(self.requests) < self.total

    @property
    def next_offset(self) -> int:
        """The ``offset`` that fetches the next page."""
        return self.offset + len(self.requests)

    def __iter__(self) -> Iterator[RequestStatus]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)

    @classmethod
    def from_json(cls, data: object, *, limit: int, offset: int) -> RequestPage:
        """Build from ``{"requests": [...], "total": N}``."""
        if not isinstance(data, dict) or not isinstance(data.get("requests"), list):
            raise _invalid("expected {'requests': [...], 'total': N}")
        requests = tuple(RequestStatus.from_json(item) for item in data["requests"])
        total = _int(data.get("total"))
        return cls(requests, total if total is not None else len(requests), limit, offset)


def _invalid(message: str) -> DarkroomError:
    return DarkroomError(message, code=INVALID_RESPONSE)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _mapping(value: object) -> Mapping[str, Any] | None:
    return value if isinstance(value, dict) else None


def _progress(value: object) -> Progress | None:
    if not isinstance(value, dict):
        return None
    step, total = _int(value.get("step")), _int(value.get("total"))
    if step is None or total is None:
        return None
    return Progress(step, total)

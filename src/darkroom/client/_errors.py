"""The SDK's exception tree. It mirrors the server's (``darkroom.errors``) by HTTP status;
``.code`` always carries the server's machine-readable code from the error body.

    DarkroomError                    root: .status_code, .code, .message, .field
     ├── AuthenticationError         401 unauthorized
     ├── PermissionDenied            403 invalid_signature
     ├── NotFoundError               404 model_not_found, request_not_found
     ├── ConflictError               409 invalid_state
     ├── PayloadTooLarge             413 payload_too_large
     ├── InvalidRequest              400, 422 invalid_field, invalid_input_image (.field)
     ├── RateLimited                 429 rate_limited (.retry_after)
     ├── ServerError                 5xx internal_error
     │    └── ServiceUnavailable     503 model_unavailable
     ├── ConnectionError             the server could not be reached (no status code)
     ├── RequestFailed               a request ended failed or cancelled (.status)
     └── WaitTimeout                 wait() gave up first (also a builtin TimeoutError)

Any other non-2xx answer, and a 2xx answer that is not the JSON the contract
promises, raise the root itself (``code`` ``"invalid_response"`` for the latter).
"""

from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ._models import RequestStatus

INVALID_RESPONSE = "invalid_response"


class DarkroomError(Exception):
    """Root of every error the SDK raises.

    Attributes:
        status_code: the HTTP status of the answer, or ``None`` when there was none.
        code: the server's machine-readable code (``"request_not_found"``, ...).
        message: the human-readable message.
        field: the payload field at fault, when the server names one.
        response: the ``httpx.Response`` behind the error, when there is one.
    """

    status_code: int | None = None
    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        code: str | None = None,
        field: str | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if code is not None:
            self.code = code
        self.field = field
        self.response = response

    def __str__(self) -> str:
        prefix = f"{self.status_code} " if self.status_code is not None else ""
        return f"{prefix}{self.code}: {self.message}"


class AuthenticationError(DarkroomError):
    """The API key is missing, unknown or revoked (401)."""

    status_code = 401
    code = "unauthorized"


class PermissionDenied(DarkroomError):
    """The server refused the call, e.g. an expired or forged signed URL (403)."""

    status_code = 403
    code = "invalid_signature"


class NotFoundError(DarkroomError):
    """No such model, or no such request visible to this key (404)."""

    status_code = 404
    code = "not_found"


class ConflictError(DarkroomError):
    """The request is in a state that does not allow the call (409)."""

    status_code = 409
    code = "invalid_state"


class PayloadTooLarge(DarkroomError):
    """The body, or an input image in it, is too large (413)."""

    status_code = 413
    code = "payload_too_large"


class InvalidRequest(DarkroomError):
    """A payload field is missing, unknown, of the wrong type or out of range (400, 422)."""

    status_code = 422
    code = "invalid_field"


class RateLimited(DarkroomError):
    """Too many calls (429). ``retry_after`` is the server's hint in seconds, if it sent one."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(DarkroomError):
    """The server failed (5xx)."""

    status_code = 500
    code = "internal_error"


class ServiceUnavailable(ServerError):
    """The model cannot serve now, e.g. no worker holds it (503)."""

    status_code = 503
    code = "model_unavailable"


class ConnectionError(DarkroomError):  # noqa: A001 - the SDK's name, like requests'
    """The server could not be reached, or the connection failed mid-call.

    The ``httpx`` exception behind it is chained as ``__cause__``.
    """

    code = "connection_error"


class RequestFailed(DarkroomError):
    """A generation request ended ``failed`` or ``cancelled``.

    ``code`` and ``message`` come from the request's outcome (``"input_moderated"``,
    ``"engine_error"``, ``"cancelled"``, ...); ``status`` is the final RequestStatus.
    """

    code = "failed"

    def __init__(self, status: RequestStatus) -> None:
        super().__init__(
            status.error_message or f"request {status.status.value}",
            code=status.error_code or status.status.value,
        )
        self.status = status
        self.request_id = status.request_id


class WaitTimeout(DarkroomError, TimeoutError):
    """``wait()`` (or ``generate()``) ran out of time before the request finished.

    The request itself goes on; ``last`` is the last status seen. Cancel it if
    the result is no longer wanted.
    """

    code = "wait_timeout"

    def __init__(self, request_id: str, timeout: float, last: RequestStatus | None) -> None:
        state = last.status.value if last is not None else "unknown"
        super().__init__(f"request {request_id} still {state} after {timeout:g}s")
        self.request_id = request_id
        self.timeout = timeout
        self.last = last


# 400 is what a server without a 422 handler answers for a bad body; treat it alike.
_BY_STATUS: dict[int, type[DarkroomError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLarge,
    422: InvalidRequest,
    429: RateLimited,
    503: ServiceUnavailable,
}


def error_class_for(status_code: int) -> type[DarkroomError]:
    """The exception class for a non-2xx HTTP status."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    if status_code >= 500:
        return ServerError
    return DarkroomError


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response) -> DarkroomError:
    """Build the typed error for a non-2xx answer.

    Reads the contract's body ``{"error": {"code", "message", "field"?}}``; falls
    back to FastAPI's ``{"detail": ...}`` and then to the raw text, so a proxy's
    HTML error page still gives a readable message.
    """
    cls = error_class_for(response.status_code)
    code: str | None = None
    field: str | None = None
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = _str_or_none(error.get("code"))
        message = _str_or_none(error.get("message")) or ""
        field = _str_or_none(error.get("field")) or _str_or_none(error.get("param"))
    elif isinstance(body, dict) and "detail" in body:
        message = str(body["detail"])
    if not message:
        message = response.text.strip()[:500] or response.reason_phrase or "HTTP error"
    kwargs: dict[str, Any] = {
        "status_code": response.status_code,
        "code": code,
        "field": field,
        "response": response,
    }
    if cls is RateLimited:
        kwargs["retry_after"] = parse_retry_after(response.headers.get("retry-after"))
    return cls(message, **kwargs)


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) and value else None

"""darkroom's exception tree. The API maps it to HTTP in one place (``api/errors.py``);
the SDK mirrors it (``darkroom.client``).

    DarkroomError                    500 internal_error
     ├── Unauthorized                401 unauthorized
     ├── Forbidden                   403 invalid_signature
     ├── NotFound                    404
     │    ├── ModelNotFound               model_not_found
     │    └── RequestNotFound             request_not_found
     ├── Conflict                    409 invalid_state
     ├── PayloadTooLarge             413 payload_too_large
     ├── RateLimited                 429 rate_limited (Retry-After)
     ├── InvalidField                422 invalid_field (names the field)
     ├── ModelUnavailable            503 model_unavailable
     ├── StoreUnavailable            503 store_unavailable (Retry-After)
     └── EngineError                 (worker side: a request that fails with a code)
"""

from __future__ import annotations


class DarkroomError(Exception):
    """Root of every error darkroom raises on purpose."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict[str, str]:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class Unauthorized(DarkroomError):
    status_code = 401
    code = "unauthorized"


class Forbidden(DarkroomError):
    status_code = 403
    code = "invalid_signature"


class NotFound(DarkroomError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestNotFound(NotFound):
    code = "request_not_found"


class Conflict(DarkroomError):
    status_code = 409
    code = "invalid_state"


class PayloadTooLarge(DarkroomError):
    status_code = 413
    code = "payload_too_large"


class RateLimited(DarkroomError):
    """Over a per-key limit; ``retry_after`` seconds until it is worth trying again."""

    status_code = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class InvalidField(DarkroomError):
    """A request field is missing, unknown, of the wrong type or out of range."""

    status_code = 422
    code = "invalid_field"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        super().__init__(f"{field}: {message}", code=code, field=field)


class ModelUnavailable(DarkroomError):
    status_code = 503
    code = "model_unavailable"


class StoreUnavailable(DarkroomError):
    """The database could not be reached, or could not confirm a write; ``retry_after`` seconds
    until it is worth trying again.

    Raised by the store when a transient database failure (a PostgreSQL restart or failover,
    a dropped connection, an exhausted connection pool) outlasts its retries, and when a
    COMMIT failed so that the write may or may not have happened: a submit that ends so is
    safe to resend with the same Idempotency-Key. A 503, not a 500: nothing is wrong with
    the request, and the client's retry is the right answer.
    """

    status_code = 503
    code = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after = max(1, int(retry_after))


class EngineError(DarkroomError):
    """Generation failed; ``code`` is what the request's outcome reports."""

    code = "engine_error"

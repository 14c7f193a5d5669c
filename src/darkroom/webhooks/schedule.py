"""When a failed webhook delivery is tried again: exponential backoff with a cap."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from darkroom.settings import Settings


@dataclass(frozen=True)
class RetrySchedule:
    """``max_attempts`` attempts in all; after failed attempt n (1-based) wait
    ``min(base_s * 2**(n-1), max_s)``, stretched by up to ``jitter`` (a fraction) so that
    deliveries that failed together do not all come back together.

    The default (11 attempts: 5 s, 10 s, 20 s ... 1280 s, then 1800 s) keeps retrying
    for 72 minutes before giving up.
    """

    max_attempts: int = 11
    base_s: float = 5.0
    max_s: float = 1800.0
    jitter: float = 0.1

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrySchedule:
        return cls(max_attempts=settings.webhook_max_attempts, base_s=settings.webhook_retry_base_s,
                   max_s=settings.webhook_retry_max_s)

    def nominal_delay(self, attempt: int) -> float | None:
        """Seconds to wait after failed attempt ``attempt`` before the next, without jitter;
        None when that was the last attempt."""
        if attempt >= self.max_attempts:
            return None
        return min(self.base_s * 2.0 ** (attempt - 1), self.max_s)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float | None:
        """``nominal_delay`` stretched by a random fraction of up to ``jitter`` (never shortened)."""
        nominal = self.nominal_delay(attempt)
        if nominal is None:
            return None
        return nominal * (1.0 + (rng or random).uniform(0.0, self.jitter))

    def span_s(self) -> float:
        """Shortest time from the first attempt to the last (jitter only adds to it)."""
        return sum(self.nominal_delay(n) or 0.0 for n in range(1, self.max_attempts))

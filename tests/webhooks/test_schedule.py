"""The retry schedule: exponential, capped, and at least an hour long by default."""

from __future__ import annotations

import random

from darkroom.settings import Settings
from darkroom.webhooks import RetrySchedule


def test_default_spans_over_an_hour() -> None:
    schedule = RetrySchedule.from_settings(Settings())
    assert schedule == RetrySchedule()
    assert schedule.max_attempts >= 10
    assert schedule.span_s() >= 3600
    # And jitter only ever lengthens it.
    rng = random.Random(1)
    assert sum(schedule.delay(n, rng) or 0 for n in range(1, schedule.max_attempts)) >= 3600


def test_delays_double_up_to_the_cap() -> None:
    schedule = RetrySchedule(max_attempts=11, base_s=5, max_s=1800, jitter=0)
    delays = [schedule.delay(n) for n in range(1, 12)]
    assert delays == [5, 10, 20, 40, 80, 160, 320, 640, 1280, 1800, None]
    assert schedule.span_s() == 4355


def test_jitter_stays_within_bounds() -> None:
    schedule = RetrySchedule(base_s=10, jitter=0.1)
    rng = random.Random(7)
    for _ in range(200):
        assert 10 <= schedule.delay(1, rng) <= 11


def test_tiny_schedule_for_tests() -> None:
    schedule = RetrySchedule.from_settings(Settings(webhook_retry_base_s=0.01, webhook_max_attempts=3))
    assert schedule.nominal_delay(1) == 0.01 and schedule.nominal_delay(2) == 0.02
    assert schedule.delay(3) is None

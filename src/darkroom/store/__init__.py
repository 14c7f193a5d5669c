"""The durable store: request queue, API keys, worker registry (SQLite or PostgreSQL).

The rest of darkroom uses ``Store`` and ``LeaseState`` only; tables, rows and SQL stay
inside this package.
"""

from darkroom.store.lifecycle import LeaseState
from darkroom.store.store import IDEMPOTENCY_TTL_S, Limits, Store, Submitted

__all__ = ["IDEMPOTENCY_TTL_S", "LeaseState", "Limits", "Store", "Submitted"]

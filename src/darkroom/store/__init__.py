"""The durable store: request queue, API keys, worker registry (SQLite or PostgreSQL).

The rest of darkroom uses ``Store`` and ``LeaseState`` only; tables, rows and SQL stay
inside this package.
"""

from darkroom.store.lifecycle import LeaseState
from darkroom.store.store import Store

__all__ = ["LeaseState", "Store"]

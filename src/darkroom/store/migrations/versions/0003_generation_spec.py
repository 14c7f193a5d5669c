"""The generation spec, batch shape keys and stored queue turns.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

- ``spec`` (JSON): the frozen generation spec the service builds at submit
  (``darkroom.spec``); NULL for rows queued before this revision (the worker builds it
  from the payload then).
- ``shape_key``: what must match for two requests to share one pipeline call.
- ``turn``: the request's place in its key's round-robin, fixed at submit. The claim
  order becomes (priority, turn, seq), all columns of the requests table, so the claim
  and the queue position are index walks instead of a join sorted on every claim.

Frozen history: do not edit once released; change the schema in a new revision and in
``darkroom/store/tables.py`` together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", recreate="never") as batch:
        batch.add_column(sa.Column("spec", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("shape_key", sa.String(200), nullable=True))
        batch.add_column(sa.Column("turn", sa.BigInteger(), nullable=False, server_default="0"))
    op.drop_index("ix_requests_claim", table_name="requests")
    op.drop_index("ix_requests_claim_priority", table_name="requests")
    op.create_index("ix_requests_queue", "requests", ["status", "model", "priority", "turn", "seq"])
    op.create_index("ix_requests_batch", "requests", ["status", "model", "shape_key", "priority", "turn", "seq"])
    op.create_index("ix_requests_key_turn", "requests", ["key_id", "status", "model", "priority", "turn"])


def downgrade() -> None:
    op.drop_index("ix_requests_key_turn", table_name="requests")
    op.drop_index("ix_requests_batch", table_name="requests")
    op.drop_index("ix_requests_queue", table_name="requests")
    op.create_index("ix_requests_claim_priority", "requests", ["status", "priority", "model", "seq"])
    op.create_index("ix_requests_claim", "requests", ["status", "model", "seq"])
    with op.batch_alter_table("requests", recreate="never") as batch:
        batch.drop_column("turn")
        batch.drop_column("shape_key")
        batch.drop_column("spec")

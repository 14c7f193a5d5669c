"""The operator's view of workers (where each runs, what it holds, whether it drains) and
admin keys (which may read that view over HTTP); an index for retention.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

Frozen history: do not edit once released; change the schema in a new revision and in
``darkroom/store/tables.py`` together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("workers", recreate="never") as batch:
        batch.add_column(sa.Column("hostname", sa.String(255), nullable=False, server_default=""))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("device", sa.String(64), nullable=False, server_default=""))
        batch.add_column(sa.Column("capacity", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("current", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("api_keys", recreate="never") as batch:
        batch.add_column(sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()))
    # Retention walks ended requests oldest first.
    op.create_index("ix_requests_finished", "requests", ["finished_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_finished", table_name="requests")
    with op.batch_alter_table("api_keys", recreate="never") as batch:
        batch.drop_column("is_admin")
    with op.batch_alter_table("workers", recreate="never") as batch:
        for name in ("draining", "current", "capacity", "device", "pid", "hostname"):
            batch.drop_column(name)

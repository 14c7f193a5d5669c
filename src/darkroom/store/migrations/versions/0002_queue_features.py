"""Queue features: priority and fairness, idempotency, per-key limits, webhooks, previews.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

Frozen history: do not edit once released; change the schema in a new revision and in
``darkroom/store/tables.py`` together.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite adds columns in place (no table rebuild) as long as each has a constant default.
    with op.batch_alter_table("requests", recreate="never") as batch:
        batch.add_column(sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("idempotency_key", sa.String(255), nullable=True))
        batch.add_column(sa.Column("request_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("dialect", sa.String(32), nullable=False, server_default="requestqueue"))
        batch.add_column(sa.Column("base_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_url", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_secret", sa.Text(), nullable=True))
        batch.add_column(sa.Column("preview_step", sa.Integer(), nullable=True))
    op.create_index("ix_requests_claim_priority", "requests", ["status", "priority", "model", "seq"])
    op.create_index(
        "ix_requests_idempotency",
        "requests",
        ["key_id", "idempotency_key"],
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.create_index("ix_requests_key_created", "requests", ["key_id", "created_at"])

    with op.batch_alter_table("api_keys", recreate="never") as batch:
        batch.add_column(sa.Column("last_claimed_at", sa.Double(), nullable=True))
        batch.add_column(sa.Column("rate_per_minute", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("max_in_flight", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("allow_high_priority", sa.Boolean(), nullable=False, server_default=sa.false()))

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.Double(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", sa.Double(), nullable=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("delivered_at", sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_deliveries"),
        sa.ForeignKeyConstraint(["request_id"], ["requests.id"], name="fk_webhook_deliveries_request_id_requests"),
        sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="ck_webhook_deliveries_status"),
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_deliveries_request_id", "webhook_deliveries", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_request_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("api_keys") as batch:
        for col in ("allow_high_priority", "max_in_flight", "rate_per_minute", "last_claimed_at"):
            batch.drop_column(col)
    op.drop_index("ix_requests_key_created", table_name="requests")
    op.drop_index("ix_requests_idempotency", table_name="requests")
    op.drop_index("ix_requests_claim_priority", table_name="requests")
    with op.batch_alter_table("requests") as batch:
        for col in ("preview_step", "webhook_secret", "webhook_url", "base_url", "dialect", "request_hash",
                    "idempotency_key", "priority"):
            batch.drop_column(col)

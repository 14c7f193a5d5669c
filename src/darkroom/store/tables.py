"""The schema as SQLAlchemy Core tables: private to ``darkroom.store``.

The migrations in ``migrations/versions`` are the history that creates this schema;
``tests/store/test_schema.py`` checks that the two agree.
"""

from __future__ import annotations

import sqlalchemy as sa

from darkroom.domain import Status

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Unix seconds as a double everywhere: DOUBLE on SQLite, DOUBLE PRECISION on PostgreSQL.
Timestamp = sa.Double

# The CHECK mirrors the Status enum (style principle 4); a test keeps them equal.
STATUS_CHECK = "status IN (" + ", ".join(f"'{s.value}'" for s in Status) + ")"

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("revoked_at", Timestamp, nullable=True),
    # Fairness: the claim serves the key that was served longest ago first (round-robin).
    sa.Column("last_claimed_at", Timestamp, nullable=True),
    # Operator-set limits (NULL: the server-wide default applies).
    sa.Column("rate_per_minute", sa.Integer(), nullable=True),
    sa.Column("max_in_flight", sa.Integer(), nullable=True),
    sa.Column("allow_high_priority", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),  # may use /api/v1/admin
    # A name is unique among active keys only: a revoked key's name may be reused.
    sa.Index(
        "ix_api_keys_active_name",
        "name",
        unique=True,
        sqlite_where=sa.text("revoked_at IS NULL"),
        postgresql_where=sa.text("revoked_at IS NULL"),
    ),
    sa.Index("ix_api_keys_prefix", "prefix"),
)

requests = sa.Table(
    "requests",
    metadata,
    # INTEGER (not BIGINT) on SQLite so that it is the rowid alias and autoincrements.
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("key_id", sa.String(36), sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("model", sa.String(200), nullable=False),
    sa.Column("payload", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("queued_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("progress_step", sa.Integer(), nullable=True),
    sa.Column("progress_total", sa.Integer(), nullable=True),
    sa.Column("cancel_requested", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("outcome", sa.JSON(), nullable=True),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("priority", sa.SmallInteger(), nullable=False, server_default="1"),  # 0 high, 1 normal, 2 low
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("request_hash", sa.String(64), nullable=True),  # what the idempotency key was used for
    sa.Column("dialect", sa.String(32), nullable=False, server_default="requestqueue"),  # shapes webhooks
    sa.Column("base_url", sa.Text(), nullable=True),  # where the client reached us: for links in webhooks
    sa.Column("webhook_url", sa.Text(), nullable=True),
    sa.Column("webhook_secret", sa.Text(), nullable=True),
    sa.Column("preview_step", sa.Integer(), nullable=True),  # step of the latest preview image, if any
    sa.Column("spec", sa.JSON(), nullable=True),  # darkroom.spec.GenerationSpec, fixed at submit
    sa.Column("shape_key", sa.String(200), nullable=True),  # equal keys may share one pipeline call
    # Round-robin place among the key's queued requests, fixed at submit (requests.next_turn).
    sa.Column("turn", sa.BigInteger(), nullable=False, server_default="0"),
    sa.CheckConstraint(STATUS_CHECK, name="status"),
    # The claim order (lifecycle.claim_batch) and queue position walk this index.
    sa.Index("ix_requests_queue", "status", "model", "priority", "turn", "seq"),
    sa.Index("ix_requests_batch", "status", "model", "shape_key", "priority", "turn", "seq"),
    sa.Index("ix_requests_key_turn", "key_id", "status", "model", "priority", "turn"),
    sa.Index("ix_requests_finished", "finished_at"),  # retention: ended requests, oldest first
    sa.Index("ix_requests_listing", "key_id", "seq"),
    sa.Index("ix_requests_stalled", "status", "lease_expires_at"),
    sa.Index(
        "ix_requests_idempotency",
        "key_id",
        "idempotency_key",
        unique=True,
        sqlite_where=sa.text("idempotency_key IS NOT NULL"),
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    ),
    sa.Index("ix_requests_key_created", "key_id", "created_at"),
    sqlite_autoincrement=True,  # never reuse a seq, even after the newest row is deleted
)

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),
    sa.Column("models", sa.JSON(), nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    sa.Column("heartbeat_at", Timestamp, nullable=False),
    sa.Column("hostname", sa.String(255), nullable=False, server_default=""),
    sa.Column("pid", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("device", sa.String(64), nullable=False, server_default=""),
    sa.Column("capacity", sa.Integer(), nullable=False, server_default="1"),  # max_batch
    sa.Column("current", sa.JSON(), nullable=True),  # ids of the requests it holds, as of its heartbeat
    sa.Column("draining", sa.Boolean(), nullable=False, server_default=sa.false()),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),  # the stable webhook-id receivers de-duplicate on
    sa.Column("request_id", sa.String(36), sa.ForeignKey("requests.id"), nullable=False),
    sa.Column("event", sa.String(32), nullable=False),  # the terminal status that triggered it
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("last_status_code", sa.Integer(), nullable=True),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("delivered_at", Timestamp, nullable=True),
    sa.CheckConstraint("status IN ('pending', 'delivered', 'failed')", name="status"),
    sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_request_id", "request_id"),
)

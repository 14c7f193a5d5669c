"""API keys: created with a random secret, stored only as its SHA-256.

Secrets are 32 random bytes, so a fast unsalted hash is enough: there is nothing to
brute-force. A key is found by its non-secret prefix and the hashes are compared in
constant time, so the response time says nothing about how much of a guess was right.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import uuid
from typing import Any

import sqlalchemy as sa

from darkroom.domain import ApiKey
from darkroom.errors import Conflict, InvalidField, NotFound
from darkroom.store.rows import to_api_key
from darkroom.store.tables import api_keys

SECRET_PREFIX = "dr_"
PREFIX_LEN = 8  # characters of the secret kept in clear, to tell keys apart in listings


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: sa.Connection, name: str, now: float | None = None) -> tuple[ApiKey, str]:
    """Create an active key named ``name``; return it and its secret (shown once, never stored).

    Raises InvalidField for an empty name, Conflict if an active key has that name.
    """
    name = name.strip()
    if not name:
        raise InvalidField("name", "must not be empty")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    values = {
        "id": str(uuid.uuid4()),
        "name": name,
        "prefix": secret[:PREFIX_LEN],
        "secret_hash": hash_secret(secret),
        "created_at": time.time() if now is None else now,
        "revoked_at": None,
    }
    # The partial unique index decides; the check gives a clear message. A savepoint keeps
    # the caller's transaction usable (PostgreSQL aborts a transaction on any error).
    try:
        with conn.begin_nested():
            row = conn.execute(api_keys.insert().values(values).returning(*api_keys.c)).one()
    except sa.exc.IntegrityError as exc:
        raise Conflict(f"an active key named {name!r} already exists") from exc
    return to_api_key(row), secret


def authenticate(conn: sa.Connection, secret: str) -> ApiKey | None:
    """The active key whose secret is ``secret``, else None."""
    digest = hash_secret(secret)
    rows = conn.execute(
        sa.select(api_keys).where(api_keys.c.prefix == secret[:PREFIX_LEN], api_keys.c.revoked_at.is_(None))
    ).all()
    found = None
    for row in rows:  # prefixes can collide; check every candidate, without early exit
        if hmac.compare_digest(row.secret_hash, digest):
            found = row
    return to_api_key(found) if found is not None else None


def lock_key(conn: sa.Connection, key_id: str) -> bool:
    """Lock the key's row until the transaction ends; False if there is no such key.

    The submit takes it first, so that one key's submits run one at a time: its per-key
    limits (count, then insert) and its idempotency lookup (look, then insert) are
    check-then-act sequences that concurrent transactions at READ COMMITTED would otherwise
    interleave. The lock is per key, so other keys' submits never wait for it.

    PostgreSQL: ``FOR NO KEY UPDATE``, the weakest lock that conflicts with itself. It does
    not conflict with the ``FOR KEY SHARE`` lock that inserting a row that references the key
    takes, so it never blocks ``insert_request`` from another path. SQLite renders no
    locking clause: a write transaction there holds the database's write lock from BEGIN
    IMMEDIATE on, which serializes every writer already.
    """
    row = conn.execute(
        sa.select(api_keys.c.id).where(api_keys.c.id == key_id).with_for_update(key_share=True)
    ).first()
    return row is not None


def list_keys(conn: sa.Connection) -> list[ApiKey]:
    """Every key, revoked ones included, oldest first."""
    rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)).all()
    return [to_api_key(r) for r in rows]


def revoke_key(conn: sa.Connection, id_or_name: str, now: float | None = None) -> ApiKey:
    """Revoke the key with this id, or the active key with this name; return it.

    Revoking a revoked key (by id) returns it unchanged. Raises NotFound if none matches.
    """
    now = time.time() if now is None else now
    row = None
    # The id first: a name is chosen by people and could, in theory, equal another key's id.
    for match in (api_keys.c.id == id_or_name, api_keys.c.name == id_or_name):
        row = conn.execute(
            sa.update(api_keys)
            .where(match, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(*api_keys.c)
        ).first()
        if row is not None:
            break
    if row is None:
        row = conn.execute(sa.select(api_keys).where(api_keys.c.id == id_or_name)).first()
    if row is None:
        raise NotFound(f"no API key {id_or_name!r}")
    return to_api_key(row)


_UNSET: Any = object()


def update_key(
    conn: sa.Connection,
    id_or_name: str,
    *,
    rate_per_minute: int | None = _UNSET,
    max_in_flight: int | None = _UNSET,
    allow_high_priority: bool = _UNSET,
    admin: bool = _UNSET,
) -> ApiKey:
    """Set an active key's limits, priority grant and admin flag; arguments left out stay as they are.

    ``None`` for a limit means the server default. Raises NotFound.
    """
    values = {name: value for name, value in (("rate_per_minute", rate_per_minute),
                                              ("max_in_flight", max_in_flight),
                                              ("allow_high_priority", allow_high_priority),
                                              ("is_admin", admin)) if value is not _UNSET}
    for name in ("rate_per_minute", "max_in_flight"):
        if values.get(name) is not None and values[name] < 1:
            raise InvalidField(name, "must be at least 1 (or unset for the server default)")
    for match in (api_keys.c.id == id_or_name, api_keys.c.name == id_or_name):
        query = sa.update(api_keys).where(match, api_keys.c.revoked_at.is_(None))
        row = conn.execute((query.values(**values) if values else query.values(id=api_keys.c.id))
                           .returning(*api_keys.c)).first()
        if row is not None:
            return to_api_key(row)
    raise NotFound(f"no active API key {id_or_name!r}")

"""API keys: hashing, authentication, revocation."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import sqlalchemy as sa

from darkroom.errors import Conflict, InvalidField, NotFound
from darkroom.store import Store


def test_create_and_authenticate(store: Store) -> None:
    key, secret = store.create_key("alice", now=100.0)
    assert secret.startswith("dr_") and len(secret) > 40
    assert key.prefix == secret[:8] and key.active and key.created_at == 100.0
    assert store.authenticate(secret) == key
    assert store.authenticate(secret + "x") is None
    assert store.authenticate(secret[:8] + "A" * (len(secret) - 8)) is None  # same prefix, wrong secret
    assert store.authenticate("") is None


def test_secrets_are_unique(store: Store) -> None:
    _, s1 = store.create_key("a")
    _, s2 = store.create_key("b")
    assert s1 != s2


def test_secret_is_stored_only_as_hash(store: Store, tmp_path: Path) -> None:
    key, secret = store.create_key("alice")
    store.close()  # flush nothing pending; the WAL may still hold the row
    with store._engine.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM api_keys WHERE id = :id"), {"id": key.id}).mappings().one()
    assert secret not in {str(v) for v in row.values()}
    assert row["secret_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    if store.backend == "sqlite":
        files = [p for p in tmp_path.glob("darkroom.db*") if p.is_file()]
        blob = b"".join(p.read_bytes() for p in files)
        assert row["secret_hash"].encode() in blob  # the check can see the row at all
        assert secret.encode() not in blob
        assert secret[8:].encode() not in blob


def test_revoked_key_cannot_authenticate(store: Store) -> None:
    key, secret = store.create_key("alice")
    revoked = store.revoke_key(key.id, now=5.0)
    assert revoked.revoked_at == 5.0 and not revoked.active
    assert store.authenticate(secret) is None
    assert store.revoke_key(key.id) == revoked  # idempotent by id


def test_revoke_by_name_and_reuse_name(store: Store) -> None:
    old, old_secret = store.create_key("ci")
    with pytest.raises(Conflict):
        store.create_key("ci")
    assert store.revoke_key("ci").id == old.id
    new, new_secret = store.create_key("ci")  # unique among active keys only
    assert new.id != old.id
    assert store.authenticate(new_secret) == new
    assert store.authenticate(old_secret) is None
    assert store.revoke_key("ci").id == new.id
    with pytest.raises(NotFound):
        store.revoke_key("ci")


def test_revoke_unknown(store: Store) -> None:
    with pytest.raises(NotFound):
        store.revoke_key("nope")


def test_empty_name_rejected(store: Store) -> None:
    with pytest.raises(InvalidField):
        store.create_key("  ")


def test_list_keys(store: Store) -> None:
    a, _ = store.create_key("a", now=1.0)
    b, _ = store.create_key("b", now=2.0)
    store.revoke_key("a", now=3.0)
    listed = store.list_keys()
    assert [k.id for k in listed] == [a.id, b.id]
    assert [k.active for k in listed] == [False, True]

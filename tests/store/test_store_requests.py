"""Requests: insertion, lookup, listings, queue position, key isolation."""

from __future__ import annotations

from darkroom.domain import Status
from darkroom.store import Store


def test_insert_and_get(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "flux", {"prompt": "a cat", "n": [1, 2]}, now=10.0)
    assert r.status is Status.QUEUED
    assert (r.created_at, r.updated_at, r.queued_at) == (10.0, 10.0, 10.0)
    assert r.attempts == 0 and r.lease_owner is None and not r.cancel_requested
    assert r.payload == {"prompt": "a cat", "n": [1, 2]}
    assert store.get_request(r.id) == r
    assert store.get_request(r.id, key_id=key_id) == r
    assert store.get_request("missing") is None


def test_other_key_sees_nothing(store: Store, key_id: str, other_key_id: str) -> None:
    r = store.insert_request(key_id, "flux", {})
    assert store.get_request(r.id, key_id=other_key_id) is None
    page = store.list_requests(other_key_id)
    assert page.items == [] and page.total == 0


def test_list_newest_first_with_filters(store: Store, key_id: str, other_key_id: str) -> None:
    ids = [store.insert_request(key_id, "a" if i % 2 == 0 else "b", {"i": i}).id for i in range(7)]
    store.insert_request(other_key_id, "a", {})
    page = store.list_requests(key_id)
    assert [r.id for r in page.items] == ids[::-1] and page.total == 7
    page = store.list_requests(key_id, limit=2, offset=1)
    assert [r.id for r in page.items] == [ids[5], ids[4]] and page.total == 7
    page = store.list_requests(key_id, model="a")
    assert [r.id for r in page.items] == [ids[6], ids[4], ids[2], ids[0]] and page.total == 4
    store.claim_request("w", ["b"], 30)
    assert [r.id for r in store.list_requests(key_id, status=Status.PROCESSING).items] == [ids[1]]
    assert store.list_requests(key_id, model="b", status=Status.QUEUED).total == 2
    assert store.count_requests() == 8


def test_queue_position(store: Store, key_id: str) -> None:
    a1 = store.insert_request(key_id, "a", {})
    b1 = store.insert_request(key_id, "b", {})
    a2 = store.insert_request(key_id, "a", {})
    a3 = store.insert_request(key_id, "a", {})
    assert [store.queue_position(r.id) for r in (a1, b1, a2, a3)] == [0, 0, 1, 2]
    store.claim_request("w", ["a"], 30)
    assert store.queue_position(a1.id) is None  # processing: not in the queue
    assert [store.queue_position(r.id) for r in (a2, a3)] == [0, 1]
    store.cancel_request(a2.id, key_id)
    assert store.queue_position(a3.id) == 0
    assert store.queue_position("missing") is None

"""Scheduling: priority, per-key round-robin, queue positions that match the claim order;
idempotency keys and per-key limits, checked in the submit transaction."""

from __future__ import annotations

import random

import pytest

from darkroom.domain import Priority, SubmitOptions
from darkroom.errors import Conflict, RateLimited
from darkroom.store import IDEMPOTENCY_TTL_S, Limits, Store

T0 = 1_000_000.0


def _submit(store: Store, key_id: str, *, priority: Priority = Priority.NORMAL, now: float = T0,
            model: str = "m", **options) -> str:
    submitted = store.submit_request(key_id, model, {"prompt": "x"},
                                     options=SubmitOptions(priority=priority, **options), now=now)
    assert submitted is not None
    return submitted.request.id


def _claim_all(store: Store, now: float = T0 + 10) -> list[str]:
    order = []
    while (claimed := store.claim_request("w", ["m"], 30, now=now)) is not None:
        order.append(claimed.id)
        now += 1
    return order


def test_round_robin_between_keys(store: Store, key_id: str, other_key_id: str) -> None:
    a = [_submit(store, key_id, now=T0 + i) for i in range(50)]
    b = _submit(store, other_key_id, now=T0 + 60)
    order = _claim_all(store)
    assert order.index(b) == 1  # right after A's first: B never waits behind A's backlog
    assert [r for r in order if r != b] == a  # FIFO within a key


def test_priority_before_round_robin(store: Store, key_id: str, other_key_id: str) -> None:
    low = _submit(store, key_id, priority=Priority.LOW)
    normal = [_submit(store, key_id, now=T0 + 1 + i) for i in range(3)]
    high = _submit(store, other_key_id, priority=Priority.HIGH, now=T0 + 9)
    order = _claim_all(store)
    assert order[0] == high and order[-1] == low and order[1:-1] == normal


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_queue_position_predicts_the_claim_order(store: Store, seed: int) -> None:
    rng = random.Random(seed)
    keys = [store.create_key(f"k{i}")[0].id for i in range(4)]
    # Give keys different turns, as if some were served recently.
    for i, k in enumerate(keys[:2]):
        _submit(store, k, now=T0 - 100 + i)
        store.claim_request("w", ["m"], 30, now=T0 - 50 + i)
    ids = [_submit(store, rng.choice(keys), priority=rng.choice(list(Priority)), now=T0 + i) for i in range(30)]
    positions = {i: store.queue_position(i) for i in ids}
    assert sorted(positions.values()) == list(range(30))
    order = _claim_all(store)
    assert order == sorted(ids, key=positions.__getitem__)


def test_idempotency_key_replays_and_conflicts(store: Store, key_id: str, other_key_id: str) -> None:
    opts = SubmitOptions(idempotency_key="abc")
    first = store.submit_request(key_id, "m", {"prompt": "x"}, options=opts, request_hash="h1", now=T0)
    again = store.submit_request(key_id, "m", {"prompt": "x"}, options=opts, request_hash="h1", now=T0 + 5)
    assert again.created is False and again.request.id == first.request.id
    with pytest.raises(Conflict) as err:
        store.submit_request(key_id, "m", {"prompt": "y"}, options=opts, request_hash="h2", now=T0 + 6)
    assert err.value.code == "idempotency_conflict"
    # Keys are per API key: another key may use the same idempotency key.
    theirs = store.submit_request(other_key_id, "m", {"prompt": "x"}, options=opts, request_hash="h1", now=T0 + 7)
    assert theirs.created and theirs.request.id != first.request.id
    # After 24 hours the key is free again.
    later = store.submit_request(key_id, "m", {"prompt": "y"}, options=opts, request_hash="h2",
                                 now=T0 + IDEMPOTENCY_TTL_S + 1)
    assert later.created and later.request.id != first.request.id
    assert store.count_requests() == 3


def test_only_existing_looks_without_inserting(store: Store, key_id: str) -> None:
    opts = SubmitOptions(idempotency_key="k")
    assert store.submit_request(key_id, "m", {}, options=opts, request_hash="h", only_existing=True) is None
    assert store.count_requests() == 0


def test_in_flight_limit(store: Store, key_id: str, other_key_id: str) -> None:
    limits = Limits(max_in_flight=2)
    for i in range(2):
        store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + i)
    with pytest.raises(RateLimited) as err:
        store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + 3)
    assert err.value.retry_after >= 1
    store.submit_request(other_key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + 3)
    claimed = store.claim_request("w", ["m"], 30, now=T0 + 4)
    assert claimed is not None
    store.finish_request(claimed.id, "w", {"media": []}, now=T0 + 5)
    if claimed.key_id == key_id:
        store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + 6)
    assert store.count_requests() == 3 + (claimed.key_id == key_id)


def test_rate_limit_with_retry_after(store: Store, key_id: str) -> None:
    limits = Limits(rate_per_minute=3)
    for i in range(3):
        store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + i * 10)
    with pytest.raises(RateLimited) as err:
        store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + 25)
    assert err.value.retry_after == 35  # the first request leaves the window at T0 + 60
    store.submit_request(key_id, "m", {}, options=SubmitOptions(), limits=limits, now=T0 + 61)
    assert store.count_requests() == 4

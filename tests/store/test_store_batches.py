"""Batch claims by shape key, cancel-aware finishing, stored turns and cheap queue positions."""

from __future__ import annotations

import pytest

from darkroom.domain import Status, SubmitOptions
from darkroom.spec import build_spec
from darkroom.store import Store
from darkroom.store import requests as requests_

T0 = 1_000_000.0


def _payload(**fields) -> dict:
    return {"prompt": "x", "steps": 4, "guidance": 2.0, "aspect_ratio": "1:1", "seed": 7, **fields}


def _submit(store: Store, key_id: str, model: str = "m", now: float = T0, **fields) -> str:
    payload = _payload(**fields)
    submitted = store.submit_request(key_id, model, payload, options=SubmitOptions(), now=now,
                                     spec=build_spec(model, payload))
    assert submitted is not None
    return submitted.request.id


def test_the_spec_is_stored_and_read_back(store: Store, key_id: str) -> None:
    rid = _submit(store, key_id, seed=0, aspect_ratio="16:9")
    request = store.get_request(rid)
    assert request.spec is not None and request.spec.seed_random and 1 <= request.spec.seed
    assert (request.spec.width, request.spec.height, request.spec.steps) == (1360, 768, 4)
    assert request.shape_key == request.spec.shape_key() and "1360x768" in request.shape_key
    assert request.spec == build_spec("m", request.payload, seed=request.spec.seed)


def test_a_claim_takes_a_batch_of_one_shape_in_queue_order(store: Store, key_id: str) -> None:
    a = [_submit(store, key_id, now=T0 + i) for i in range(3)]
    odd = _submit(store, key_id, now=T0 + 3, steps=9)  # another shape: not in the batch
    more = [_submit(store, key_id, now=T0 + 4 + i) for i in range(3)]
    batch = store.claim_batch("w", ["m"], 30, max_batch=4, now=T0 + 10)
    assert [r.id for r in batch] == a + more[:1]
    assert all(r.status == Status.PROCESSING and r.lease_owner == "w" and r.attempts == 1 for r in batch)
    # The head of the queue is now the odd one: it goes first, and alone.
    assert [r.id for r in store.claim_batch("w", ["m"], 30, max_batch=4, now=T0 + 11)] == [odd]
    # Filling a batch takes only the shape asked for.
    shape = batch[0].shape_key
    assert [r.id for r in store.claim_batch("w", ["m"], 30, max_batch=1, shape_key=shape, now=T0 + 12)] == more[1:2]
    assert store.claim_batch("w", ["m"], 30, max_batch=4, shape_key="other", now=T0 + 12) == []


def test_requests_without_a_spec_run_alone(store: Store, key_id: str) -> None:
    ids = [store.insert_request(key_id, "m", _payload(), now=T0 + i).id for i in range(3)]
    assert [r.id for r in store.claim_batch("w", ["m"], 30, max_batch=4, now=T0 + 5)] == ids[:1]


def test_a_cancel_accepted_before_finish_wins(store: Store, key_id: str) -> None:
    rid = _submit(store, key_id)
    store.claim_batch("w", ["m"], 30, max_batch=1, now=T0 + 1)
    assert store.cancel_request(rid, key_id, now=T0 + 2).cancel_requested
    ended = store.finish_request(rid, "w", {"media": [{"id": "0", "key": "k"}]}, now=T0 + 3)
    assert ended is not None and ended.status == Status.CANCELLED
    assert store.get_request(rid).status == Status.CANCELLED


def test_batch_leases_renew_together_and_say_who_owns_what(store: Store, key_id: str) -> None:
    ids = [_submit(store, key_id, now=T0 + i) for i in range(3)]
    store.claim_batch("w", ["m"], 30, max_batch=3, now=T0 + 5)
    store.cancel_request(ids[1], key_id, now=T0 + 6)
    states = store.renew_leases(ids, "w", 30, now=T0 + 7)
    assert [(s.owned, s.cancel_requested) for s in states.values()] == [(True, False), (True, True), (True, False)]
    assert not any(s.owned for s in store.renew_leases(ids, "someone-else", 30, now=T0 + 8).values())
    assert store.lease_states(ids, "w") == store.renew_leases(ids, "w", 30, now=T0 + 9)
    progress = store.report_progress_batch("w", {ids[0]: (2, 4, None), ids[2]: (3, 4, 2)}, lease_s=30, now=T0 + 10)
    assert all(s.owned for s in progress.values())
    assert (store.get_request(ids[2]).progress_step, store.get_request(ids[2]).preview_step) == (3, 2)


def test_turns_interleave_keys_and_positions_follow_them(store: Store, key_id: str, other_key_id: str) -> None:
    a = [_submit(store, key_id, now=T0 + i) for i in range(5)]
    b = [_submit(store, other_key_id, now=T0 + 10 + i) for i in range(2)]
    assert [store.get_request(i).turn for i in a + b] == [0, 1, 2, 3, 4, 0, 1]
    assert [store.queue_position(i) for i in a + b] == [0, 2, 4, 5, 6, 1, 3]


def test_positions_beyond_the_exact_limit_are_estimated(store: Store, key_id: str, other_key_id: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(requests_, "EXACT_POSITION_LIMIT", 10)
    one_key = [_submit(store, key_id, now=T0 + i) for i in range(40)]
    assert store.queue_position(one_key[5]) == 5  # within the limit: exact
    assert store.queue_position(one_key[-1]) == 39  # beyond: one request per turn, estimated exactly
    two_keys = [_submit(store, other_key_id, now=T0 + 100 + i) for i in range(40)]
    # Two keys alternate now: the true position of B's last is 79; the estimate is close.
    assert abs(store.queue_position(two_keys[-1]) - 79) <= 2

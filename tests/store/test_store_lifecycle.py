"""Status transitions: claim, lease, finish/fail, cancel, recovery."""

from __future__ import annotations

import itertools

import pytest

from darkroom.domain import TRANSITIONS, Status
from darkroom.errors import Conflict, RequestNotFound
from darkroom.store import LeaseState, Store
from darkroom.store.lifecycle import _transition

T0 = 1_000.0


def test_claim_is_fifo_within_served_models(store: Store, key_id: str) -> None:
    a1 = store.insert_request(key_id, "a", {}, now=T0)
    b1 = store.insert_request(key_id, "b", {}, now=T0)
    a2 = store.insert_request(key_id, "a", {}, now=T0)
    c1 = store.insert_request(key_id, "c", {}, now=T0)
    assert store.claim_request("w", [], 30, now=T0) is None
    assert store.claim_request("w", ["z"], 30, now=T0) is None
    assert store.claim_request("w", ["a"], 30, now=T0).id == a1.id
    assert store.claim_request("w", ["c", "a"], 30, now=T0).id == a2.id
    assert store.claim_request("w", ["a"], 30, now=T0) is None
    assert store.claim_request("w", ["a", "b", "c"], 30, now=T0).id == b1.id
    assert store.claim_request("w", ["a", "b", "c"], 30, now=T0).id == c1.id
    assert store.claim_request("w", ["a", "b", "c"], 30, now=T0) is None


def test_claim_sets_lease(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {}, now=T0)
    claimed = store.claim_request("w1", ["m"], 30, now=T0 + 5)
    assert claimed.id == r.id and claimed.status is Status.PROCESSING
    assert claimed.lease_owner == "w1" and claimed.lease_expires_at == T0 + 35
    assert claimed.started_at == T0 + 5 and claimed.updated_at == T0 + 5 and claimed.queued_at == T0
    assert claimed.attempts == 1
    assert store.get_request(r.id) == claimed


def test_happy_path_success(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {}, now=T0)
    store.claim_request("w1", ["m"], 30, now=T0)
    assert store.report_progress(r.id, "w1", 3, 10, lease_s=30, now=T0 + 1) == LeaseState(True, False)
    assert store.get_request(r.id).progress_step == 3
    done = store.finish_request(r.id, "w1", {"images": [{"url": "x"}]}, now=T0 + 2)
    assert done.status is Status.SUCCESS and done.finished_at == T0 + 2
    assert done.outcome == {"images": [{"url": "x"}]} and done.error is None
    assert done.lease_expires_at is None
    # Exactly once: a second finish (or any other move from success) matches no row.
    assert store.finish_request(r.id, "w1", {"images": []}) is None
    assert store.fail_request(r.id, "w1", {"code": "x", "message": "y"}) is None
    assert store.mark_cancelled(r.id, "w1") is None
    assert store.get_request(r.id).outcome == {"images": [{"url": "x"}]}


def test_success_reads_every_step_done_even_without_a_progress_report(store: Store, key_id: str) -> None:
    reported = store.insert_request(key_id, "m", {}, now=T0)
    silent = store.insert_request(key_id, "m", {}, now=T0)
    store.claim_request("w1", ["m"], 30, now=T0)
    store.claim_request("w1", ["m"], 30, now=T0)
    store.report_progress(reported.id, "w1", 3, 10, lease_s=30, now=T0 + 1)
    # The last report (10 of 10) was still in flight, or every report failed: the total stands.
    done = store.finish_request(reported.id, "w1", {"images": []}, now=T0 + 2, steps=99)
    assert (done.progress_step, done.progress_total) == (10, 10)
    done = store.finish_request(silent.id, "w1", {"images": []}, now=T0 + 2, steps=6)
    assert (done.progress_step, done.progress_total) == (6, 6)


def test_fail_request(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    store.claim_request("w1", ["m"], 30)
    error = {"code": "engine_error", "message": "boom"}
    assert store.fail_request(r.id, "w2", error) is None  # not the owner
    failed = store.fail_request(r.id, "w1", error, now=T0)
    assert failed.status is Status.FAILED and failed.error == error
    assert failed.outcome == {"error": error} and failed.finished_at == T0


def test_worker_moves_need_processing(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    # queued: not claimed by anyone, so no worker may finish, fail or cancel it.
    assert store.finish_request(r.id, "w1", {}) is None
    assert store.fail_request(r.id, "w1", {"code": "x", "message": "y"}) is None
    assert store.mark_cancelled(r.id, "w1") is None
    assert not store.renew_lease(r.id, "w1", 30)
    assert store.get_request(r.id).status is Status.QUEUED
    assert store.finish_request("missing", "w1", {}) is None


ILLEGAL = [(a, b) for a, b in itertools.product(Status, Status) if b not in TRANSITIONS[a]]


@pytest.mark.parametrize(("source", "target"), ILLEGAL, ids=[f"{a}-{b}" for a, b in ILLEGAL])
def test_transition_refuses_illegal_moves(store: Store, key_id: str, source: Status, target: Status) -> None:
    r = store.insert_request(key_id, "m", {})
    with pytest.raises(ValueError, match="not a legal transition"), store._write() as conn:
        _transition(conn, r.id, target, expect={source}, now=T0)


def _in_state(store: Store, key_id: str, status: Status) -> str:
    model = f"model-{status}"  # its own queue, so the claim takes this very request
    r = store.insert_request(key_id, model, {})
    if status is Status.QUEUED:
        return r.id
    assert store.claim_request("w", [model], 30).id == r.id
    if status is Status.SUCCESS:
        store.finish_request(r.id, "w", {})
    elif status is Status.FAILED:
        store.fail_request(r.id, "w", {"code": "x", "message": "y"})
    elif status is Status.CANCELLED:
        store.mark_cancelled(r.id, "w")
    return r.id


LEGAL = [(a, b) for a in Status for b in TRANSITIONS[a]]


@pytest.mark.parametrize(("source", "target"), LEGAL, ids=[f"{a}-{b}" for a, b in LEGAL])
def test_transition_from_wrong_state_matches_no_row(store: Store, key_id: str, source: Status, target: Status) -> None:
    for actual in Status:
        request_id = _in_state(store, key_id, actual)
        with store._write() as conn:
            moved = _transition(conn, request_id, target, expect={source}, now=T0)
        if actual is source:
            assert moved is not None and moved.status is target
        else:
            assert moved is None
            assert store.get_request(request_id).status is actual


def test_renew_lease(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    store.claim_request("w1", ["m"], 10, now=T0)
    state = store.renew_lease(r.id, "w1", 10, now=T0 + 8)
    assert state and state == LeaseState(owned=True, cancel_requested=False)
    assert store.get_request(r.id).lease_expires_at == T0 + 18
    assert store.requeue_stalled(3, now=T0 + 12) == ([], [])  # renewed: not stalled
    assert not store.renew_lease(r.id, "w2", 10, now=T0 + 9)
    assert store.get_request(r.id).lease_expires_at == T0 + 18


def test_zombie_cannot_finish_after_requeue(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    store.claim_request("zombie", ["m"], 10, now=T0)
    assert store.requeue_stalled(3, now=T0 + 11) == ([r.id], [])
    requeued = store.get_request(r.id)
    assert requeued.status is Status.QUEUED and requeued.lease_owner is None
    assert requeued.queued_at == r.queued_at and requeued.attempts == 1 and requeued.started_at is None
    assert store.finish_request(r.id, "zombie", {"images": ["stale"]}) is None
    assert not store.renew_lease(r.id, "zombie", 10)

    again = store.claim_request("w2", ["m"], 10, now=T0 + 12)
    assert again.id == r.id and again.attempts == 2
    assert store.finish_request(r.id, "zombie", {"images": ["stale"]}) is None
    assert store.report_progress(r.id, "zombie", 1, 2, lease_s=10) == LeaseState(False, False)
    assert store.finish_request(r.id, "w2", {"images": ["fresh"]}).outcome == {"images": ["fresh"]}


def test_requeue_stalled_bounded_attempts(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    t = T0
    for attempt in (1, 2):
        claimed = store.claim_request("w", ["m"], 10, now=t)
        assert claimed.attempts == attempt
        assert store.requeue_stalled(2, now=t + 5) == ([], [])  # lease still valid
        t += 11
        assert store.requeue_stalled(2, now=t) == (([r.id], []) if attempt == 1 else ([], [r.id]))
    failed = store.get_request(r.id)
    assert failed.status is Status.FAILED
    assert failed.error["code"] == "worker_lost"
    assert failed.error["message"] == "the worker processing this request stopped responding 2 times"
    assert failed.outcome == {"error": failed.error}
    assert store.requeue_stalled(2, now=t + 100) == ([], [])


def test_requeue_leaves_queued_and_live_alone(store: Store, key_id: str) -> None:
    queued = store.insert_request(key_id, "q", {})
    live = store.insert_request(key_id, "m", {})
    stalled = store.insert_request(key_id, "m", {})
    store.claim_request("w1", ["m"], 100, now=T0)
    store.claim_request("w2", ["m"], 10, now=T0)
    assert store.requeue_stalled(3, now=T0 + 50) == ([stalled.id], [])
    assert store.get_request(live.id).status is Status.PROCESSING
    assert store.get_request(queued.id).status is Status.QUEUED
    # The requeued request keeps its place: first in line again.
    assert store.queue_position(stalled.id) == 0
    assert store.claim_request("w3", ["m"], 10, now=T0 + 51).id == stalled.id


def test_requeue_cancels_a_stalled_request_whose_cancel_was_requested(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    store.claim_request("w", ["m"], 10, now=T0)
    store.cancel_request(r.id, key_id, now=T0 + 1)
    assert store.requeue_stalled(3, now=T0 + 11) == ([], [])
    got = store.get_request(r.id)
    assert got.status is Status.CANCELLED and got.outcome["error"]["code"] == "cancelled"


def test_cancel_queued(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    cancelled = store.cancel_request(r.id, key_id, now=T0)
    assert cancelled.status is Status.CANCELLED and cancelled.finished_at == T0
    assert cancelled.outcome["error"]["code"] == "cancelled" and cancelled.outcome["error"]["message"]
    assert store.claim_request("w", ["m"], 10) is None


def test_cancel_processing_is_cooperative(store: Store, key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    store.claim_request("w1", ["m"], 10, now=T0)
    flagged = store.cancel_request(r.id, key_id, now=T0 + 1)
    assert flagged.status is Status.PROCESSING and flagged.cancel_requested
    assert store.cancel_request(r.id, key_id).cancel_requested  # again: same answer
    assert store.renew_lease(r.id, "w1", 10) == LeaseState(owned=True, cancel_requested=True)
    assert store.report_progress(r.id, "w1", 2, 4, lease_s=10).cancel_requested
    assert store.mark_cancelled(r.id, "w2") is None  # only the owner
    done = store.mark_cancelled(r.id, "w1", now=T0 + 2)
    assert done.status is Status.CANCELLED and done.outcome["error"]["code"] == "cancelled"
    assert store.finish_request(r.id, "w1", {"images": []}) is None  # what the pipeline returns is discarded


@pytest.mark.parametrize("status", [Status.SUCCESS, Status.FAILED, Status.CANCELLED])
def test_cancel_terminal_conflicts(store: Store, key_id: str, status: Status) -> None:
    request_id = _in_state(store, key_id, status)
    with pytest.raises(Conflict, match=f"request is already {status.value}"):
        store.cancel_request(request_id, key_id)
    assert store.get_request(request_id).status is status


def test_cancel_unknown_or_other_key(store: Store, key_id: str, other_key_id: str) -> None:
    r = store.insert_request(key_id, "m", {})
    with pytest.raises(RequestNotFound):
        store.cancel_request("missing", key_id)
    with pytest.raises(RequestNotFound):
        store.cancel_request(r.id, other_key_id)
    store.claim_request("w", ["m"], 10)
    with pytest.raises(RequestNotFound):
        store.cancel_request(r.id, other_key_id)
    assert not store.get_request(r.id).cancel_requested

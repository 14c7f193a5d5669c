"""The store side of webhooks: one delivery row per terminal transition, claimed under a lease."""

from __future__ import annotations

import threading

import pytest

from darkroom.domain import Status
from darkroom.store import Store
from darkroom.store.webhooks import DeliveryStatus

from _webhook_helpers import HOOK, T0, Submit

pytestmark = pytest.mark.timeout(120)


def _claim(store: Store, worker: str = "w1", now: float = T0) -> None:
    assert store.claim_request(worker, ["m"], 30, now=now) is not None


def _only_delivery(store: Store, request_id: str, event: str) -> None:
    [d] = store.list_webhook_deliveries(request_id)
    assert (d.event, d.status, d.attempts, d.next_attempt_at) == (event, DeliveryStatus.PENDING, 0, d.created_at)


def test_success_queues_exactly_one_delivery(store: Store, submit: Submit) -> None:
    r = submit()
    assert store.list_webhook_deliveries(r.id) == []
    _claim(store)
    store.report_progress(r.id, "w1", 1, 2, lease_s=30, now=T0 + 1)
    assert store.list_webhook_deliveries(r.id) == []  # only terminal states notify
    assert store.finish_request(r.id, "w1", {"media": []}, now=T0 + 2) is not None
    _only_delivery(store, r.id, "success")
    # Lost races and repeats write nothing, so they queue nothing either.
    assert store.finish_request(r.id, "w1", {"media": []}, now=T0 + 3) is None
    assert store.fail_request(r.id, "w1", {"code": "x", "message": "y"}) is None
    assert store.mark_cancelled(r.id, "w1") is None
    _only_delivery(store, r.id, "success")


def test_failure_and_both_cancels_queue_one_each(store: Store, submit: Submit, key_id: str) -> None:
    failed, queued, running = submit(), submit(), submit()
    _claim(store)  # failed (FIFO)
    store.fail_request(failed.id, "w1", {"code": "engine_error", "message": "boom"}, now=T0 + 1)
    _only_delivery(store, failed.id, "failed")

    store.cancel_request(queued.id, key_id, now=T0 + 1)  # queued -> cancelled at once
    _only_delivery(store, queued.id, "cancelled")

    _claim(store, "w2")  # running
    store.cancel_request(running.id, key_id, now=T0 + 1)  # only flagged
    assert store.list_webhook_deliveries(running.id) == []
    store.mark_cancelled(running.id, "w2", now=T0 + 2)
    _only_delivery(store, running.id, "cancelled")


def test_recovery(store: Store, submit: Submit) -> None:
    r = submit()
    _claim(store)
    requeued, failed = store.requeue_stalled(max_attempts=2, now=T0 + 60)
    assert requeued == [r.id] and store.list_webhook_deliveries(r.id) == []  # back to queued: not terminal
    _claim(store, "w2", now=T0 + 61)
    requeued, failed = store.requeue_stalled(max_attempts=2, now=T0 + 200)
    assert failed == [r.id]
    _only_delivery(store, r.id, "failed")


def test_no_webhook_url_no_delivery(store: Store, submit: Submit) -> None:
    r = submit(webhook_url=None)
    _claim(store)
    store.finish_request(r.id, "w1", {"media": []})
    assert store.list_webhook_deliveries(r.id) == []
    assert store.claim_webhook_deliveries("d1", lease_s=30, limit=10) == []


def _finished(store: Store, submit: Submit, n: int = 1) -> list[str]:
    ids = []
    for _ in range(n):
        r = submit()
        _claim(store)
        store.finish_request(r.id, "w1", {"media": []}, now=T0)
        ids.append(store.list_webhook_deliveries(r.id)[0].id)
    return ids


def test_claim_leases_and_records(store: Store, submit: Submit) -> None:
    [d_id] = _finished(store, submit)
    [claimed] = store.claim_webhook_deliveries("d1", lease_s=30, limit=10, now=T0 + 1)
    assert claimed.id == d_id and claimed.lease_owner == "d1" and claimed.lease_expires_at == T0 + 31
    assert store.claim_webhook_deliveries("d2", lease_s=30, limit=10, now=T0 + 2) == []  # leased

    retry = store.record_webhook_attempt(d_id, "d1", delivered=False, status_code=500, error="HTTP 500",
                                         retry_at=T0 + 20, now=T0 + 3)
    assert (retry.status, retry.attempts, retry.last_status_code, retry.last_error) == (
        DeliveryStatus.PENDING, 1, 500, "HTTP 500")
    assert retry.lease_owner is None and retry.next_attempt_at == T0 + 20
    assert store.claim_webhook_deliveries("d2", lease_s=30, limit=10, now=T0 + 19) == []  # not due yet
    [again] = store.claim_webhook_deliveries("d2", lease_s=30, limit=10, now=T0 + 20)
    # d1's lease is gone: its late record is refused.
    assert store.record_webhook_attempt(d_id, "d1", delivered=True, status_code=200, now=T0 + 21) is None
    done = store.record_webhook_attempt(again.id, "d2", delivered=True, status_code=204, now=T0 + 22)
    assert (done.status, done.attempts, done.delivered_at, done.last_error) == (
        DeliveryStatus.DELIVERED, 2, T0 + 22, None)
    assert store.claim_webhook_deliveries("d3", lease_s=30, limit=10, now=T0 + 10_000) == []


def test_lapsed_lease_is_taken_over_and_give_up_fails(store: Store, submit: Submit) -> None:
    [d_id] = _finished(store, submit)
    store.claim_webhook_deliveries("d1", lease_s=30, limit=10, now=T0)
    [taken] = store.claim_webhook_deliveries("d2", lease_s=30, limit=10, now=T0 + 31)  # d1 died mid-send
    assert taken.lease_owner == "d2"
    gone = store.record_webhook_attempt(d_id, "d2", delivered=False, status_code=410, error="gone",
                                        retry_at=None, now=T0 + 32)
    assert gone.status is DeliveryStatus.FAILED
    assert store.claim_webhook_deliveries("d3", lease_s=30, limit=10, now=T0 + 10_000) == []


def test_release_hands_leases_back(store: Store, submit: Submit) -> None:
    _finished(store, submit, 2)
    assert len(store.claim_webhook_deliveries("d1", lease_s=30, limit=10, now=T0)) == 2
    assert store.release_webhook_deliveries("d1", now=T0 + 1) == 2
    assert len(store.claim_webhook_deliveries("d2", lease_s=30, limit=10, now=T0 + 1)) == 2


def test_claims_are_oldest_due_first_and_limited(store: Store, submit: Submit) -> None:
    ids = _finished(store, submit, 3)
    first = store.claim_webhook_deliveries("d1", lease_s=30, limit=2, now=T0)
    assert [d.id for d in first] == ids[:2]
    assert [d.id for d in store.claim_webhook_deliveries("d2", lease_s=30, limit=2, now=T0)] == ids[2:]


def test_concurrent_claimers_never_share(store: Store, submit: Submit) -> None:
    ids = _finished(store, submit, 12)
    taken: list[str] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while claimed := store.claim_webhook_deliveries(name, lease_s=300, limit=2, now=T0 + 1):
            with lock:
                taken.extend(d.id for d in claimed)

    threads = [threading.Thread(target=claimer, args=(f"d{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(ids)  # each exactly once


def test_request_status_is_untouched(store: Store, submit: Submit) -> None:
    r = submit()
    _claim(store)
    done = store.finish_request(r.id, "w1", {"media": []}, now=T0 + 2)
    assert done.status is Status.SUCCESS and done.webhook_url == HOOK

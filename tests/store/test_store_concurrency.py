"""Concurrent claimers never share a request: threads on both backends, processes too."""

from __future__ import annotations

import threading
from collections import Counter

import _store_children

from darkroom.domain import Status
from darkroom.store import Store

N_REQUESTS = 50
N_CLAIMERS = 4


def _fill(store: Store, key_id: str) -> set[str]:
    return {store.insert_request(key_id, "m", {"i": i}).id for i in range(N_REQUESTS)}


def _check(store: Store, ids: set[str], results: dict[str, list[str]]) -> None:
    counts = Counter(i for claimed in results.values() for i in claimed)
    assert set(counts) == ids
    assert max(counts.values()) == 1  # each claimed exactly once
    for worker_id, claimed in results.items():
        for request_id in claimed:
            r = store.get_request(request_id)
            assert r.status is Status.PROCESSING and r.lease_owner == worker_id and r.attempts == 1


def test_threads_claim_each_request_once(store: Store, key_id: str) -> None:
    ids = _fill(store, key_id)
    results: dict[str, list[str]] = {}
    barrier = threading.Barrier(N_CLAIMERS)

    def run(worker_id: str) -> None:
        results[worker_id] = _store_children.claim_all(store.url, worker_id, ["m"], barrier)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(N_CLAIMERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == N_CLAIMERS
    _check(store, ids, results)


def test_processes_claim_each_request_once(store: Store, key_id: str) -> None:
    ids = _fill(store, key_id)
    ctx = _store_children.context()
    start = ctx.Event()
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_store_children.claim_all_into, args=(store.url, f"p{i}", ["m"], start, out))
        for i in range(N_CLAIMERS)
    ]
    for p in procs:
        p.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    _check(store, ids, results)

"""Durability and cancel: worker crashes, server restarts, cancelling queued and running work."""

from __future__ import annotations

from darkroom.store import Store
from darkroom.testing.server import Process, Server, wait_for


def _worker(dep, name: str) -> Process:
    return Process(["worker"], dep.env, dep.data_dir.parent / f"{name}.log").start()


def test_kill_9_worker_mid_request_then_new_worker_finishes_it(fresh_deployment) -> None:
    dep = fresh_deployment
    api = dep.a
    rid = api.submit("tiny-slow", steps=300, seed=5)["request_id"]
    first = _worker(dep, "worker-1")
    try:
        wait_for(lambda: (s := api.status(rid))["status"] == "processing" and (s.get("progress") or {}).get("step"),
                 timeout=120, what="the request to be processing")
        first.kill()
        second = _worker(dep, "worker-2")
        try:
            final = api.wait(rid, timeout=300)
        finally:
            second.stop()
    finally:
        first.kill()
    assert final["status"] == "success", final
    assert final["attempts"] == 2
    store = Store(f"sqlite:///{dep.data_dir / 'darkroom.db'}")
    try:
        record = store.get_request(rid)
    finally:
        store.close()
    assert record is not None and record.outcome is not None
    assert len(record.outcome["media"]) == 1


def test_restart_with_20_queued_requests(fresh_deployment) -> None:
    dep = fresh_deployment
    ids = [dep.a.submit(seed=i + 1)["request_id"] for i in range(20)]
    assert all(dep.a.status(i)["status"] == "queued" for i in ids)
    dep.server.stop()
    server = Server(dep.env, dep.data_dir.parent / "serve-2.log", worker=True).start()
    dep.server = server
    api = type(dep.a)(server.url, dep.a.key)
    finals = [api.wait(i, timeout=300) for i in ids]
    assert [f["status"] for f in finals] == ["success"] * 20


def test_cancel_queued_and_processing(fresh_deployment) -> None:
    dep = fresh_deployment
    api = dep.a
    queued = api.submit(seed=1)["request_id"]
    resp = api.post(f"/requests/{queued}/cancel")
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    assert resp.json()["outcome"]["error"]["code"] == "cancelled"
    again = api.post(f"/requests/{queued}/cancel")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"

    running = api.submit("tiny-slow", steps=2000, seed=2)["request_id"]
    worker = _worker(dep, "worker-cancel")
    try:
        wait_for(lambda: (api.status(running).get("progress") or {}).get("step", 0) >= 2, timeout=120,
                 what="the request to make progress")
        resp = api.post(f"/requests/{running}/cancel")
        assert resp.status_code == 200
        final = api.wait(running, timeout=60)
        assert final["status"] == "cancelled"
        assert final["progress"]["step"] < 2000
    finally:
        worker.stop()

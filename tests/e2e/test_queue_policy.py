"""Through real HTTP: fairness between keys, priority, idempotency keys and per-key limits."""

from __future__ import annotations

import httpx

from darkroom.store import Store
from darkroom.testing.server import Process, create_key, run_cli, wait_for


def _started_at(dep, ids: list[str]) -> dict[str, float]:
    store = Store(f"sqlite:///{dep.data_dir / 'darkroom.db'}")
    try:
        return {i: store.get_request(i).started_at for i in ids}
    finally:
        store.close()


def test_one_key_cannot_starve_another(fresh_deployment) -> None:
    dep = fresh_deployment
    a_ids = [dep.a.submit(seed=i + 1, steps=1)["request_id"] for i in range(50)]
    b_id = dep.b.submit(seed=99, steps=1)["request_id"]
    assert dep.b.status(b_id)["queue_position"] == 1
    worker = Process(["worker"], dep.env, dep.data_dir.parent / "worker.log").start()
    try:
        dep.b.wait(b_id)
        wait_for(lambda: dep.a.status(a_ids[9])["status"] != "queued", timeout=180, what="A's tenth to start")
    finally:
        worker.stop()
    started = _started_at(dep, [b_id, a_ids[9]])
    assert started[b_id] < started[a_ids[9]]


def test_priority_needs_a_grant_and_goes_first(fresh_deployment) -> None:
    dep = fresh_deployment
    resp = dep.a.post("/requests", {"model": "tiny", "payload": {"prompt": "x"}, "priority": "high"})
    assert resp.status_code == 403 and resp.json()["error"]["code"] == "priority_not_allowed"
    run_cli(["keys", "update", "bob", "--allow-high-priority"], dep.env)
    normal = [dep.a.submit(seed=i + 1)["request_id"] for i in range(3)]
    low = dep.a.post("/requests", {"model": "tiny", "payload": {"prompt": "x"}},
                     headers={"X-Priority": "low"}).json()["request_id"]
    high = dep.b.post("/requests", {"model": "tiny", "payload": {"prompt": "x"}, "priority": "high"}).json()
    assert dep.b.status(high["request_id"])["queue_position"] == 0
    assert dep.a.status(low)["queue_position"] == 4
    bad = dep.a.post("/requests", {"model": "tiny", "payload": {"prompt": "x"}}, headers={"X-Priority": "urgent"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "X-Priority"


def test_idempotency_key(deployment) -> None:
    api = deployment.a
    body = {"model": "tiny", "payload": {"prompt": "idempotent circle", "seed": 5}}
    first = api.post("/requests", body, headers={"Idempotency-Key": "order-17"})
    again = api.post("/requests", body, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == again.status_code == 200
    assert again.json()["request_id"] == first.json()["request_id"]
    assert again.headers.get("idempotent-replayed") == "true"
    other = api.post("/requests", {**body, "payload": {"prompt": "another"}}, headers={"Idempotency-Key": "order-17"})
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_conflict"
    theirs = deployment.b.post("/requests", body, headers={"Idempotency-Key": "order-17"})
    assert theirs.status_code == 200 and theirs.json()["request_id"] != first.json()["request_id"]
    api.wait(first.json()["request_id"])
    deployment.b.wait(theirs.json()["request_id"])


def test_limits_answer_429_with_retry_after(deployment) -> None:
    env = deployment.env
    key = create_key(env, "limited")
    run_cli(["keys", "update", "limited", "--rpm", "3"], env)
    url = f"{deployment.server.url}/api/v1/ie/requestqueue/apikey/requests"
    headers = {"Authorization": f"Bearer {key}"}
    codes = [httpx.post(url, json={"model": "tiny", "payload": {"prompt": "x", "steps": 1}}, headers=headers)
             for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    assert codes[-1].json()["error"]["code"] == "rate_limited"
    assert 1 <= int(codes[-1].headers["retry-after"]) <= 60

    key2 = create_key(env, "narrow")
    run_cli(["keys", "update", "narrow", "--max-in-flight", "1"], env)
    headers2 = {"Authorization": f"Bearer {key2}"}
    slow = httpx.post(url, json={"model": "tiny-slow", "payload": {"prompt": "x", "steps": 2000}}, headers=headers2)
    assert slow.status_code == 200
    blocked = httpx.post(url, json={"model": "tiny", "payload": {"prompt": "x"}}, headers=headers2)
    assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
    cancel = httpx.post(f"{url}/{slow.json()['request_id']}/cancel", headers=headers2)
    assert cancel.status_code == 200
    wait_for(lambda: httpx.get(f"{url}/{slow.json()['request_id']}", headers=headers2).json()["status"] == "cancelled",
             timeout=60, what="cancel")
    assert httpx.post(url, json={"model": "tiny", "payload": {"prompt": "x"}}, headers=headers2).status_code == 200

"""Process lifecycle: draining on SIGTERM, no orphaned worker child, and fast recovery when a
worker dies (its supervisor, or its silence, tells; the lease is not waited out).

Recovery is judged on the request's recorded timestamps against the lease (30 s here): a
request that runs again well within the lease was recovered, not found by lease expiry.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from darkroom.settings import Settings
from darkroom.store import Store
from darkroom.testing.api import Api, start_deployment
from darkroom.testing.server import Process, run_cli, wait_for

LEASE_S = 30.0


def _store(dep) -> Store:
    return Store(f"sqlite:///{dep.data_dir / 'darkroom.db'}")


def _child(store: Store, exclude: set[int] = frozenset()) -> int:
    """The pid of the worker that darkroom serve started (it names it ...-serve<pid>-<n>)."""
    def find():
        return next((w.pid for w in store.list_workers() if "-serve" in w.id and w.pid not in exclude), None)
    return wait_for(find, timeout=120, what="serve's worker child to register")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_operator_sees_workers_and_sigterm_to_serve_stops_its_child(tmp_path: Path, tiny_models: Path) -> None:
    dep = start_deployment(tmp_path, tiny_models)
    store = _store(dep)
    child = _child(store)
    # The operator's view: the CLI, and the HTTP route for admin keys only.
    listing = run_cli(["workers"], dep.env)
    assert "-serve" in listing and "tiny-slow" in listing and " live " in listing and str(child) in listing
    url = f"{dep.server.url}/api/v1/admin/workers"
    refused = httpx.get(url, headers=dep.a.headers, timeout=30)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_required"
    run_cli(["keys", "update", "alice", "--admin"], dep.env)  # the API forgets its cached key at once
    [worker] = httpx.get(url, headers=dep.a.headers, timeout=30).json()["workers"]
    assert worker["pid"] == child and worker["state"] == "live" and "tiny" in worker["models"]
    assert worker["capacity"] >= 1 and worker["current"] == []
    os.kill(dep.server.pid, signal.SIGTERM)  # the parent only, as an init system would
    # uvicorn ends by re-raising the signal it caught (the conventional exit status of a
    # process stopped by SIGTERM); by then the child has been drained and reaped.
    assert dep.server.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert _gone(child)
    assert store.list_workers() == []  # it unregistered: a clean drain


def test_kill_9_of_serve_makes_its_worker_child_exit(tmp_path: Path, tiny_models: Path) -> None:
    dep = start_deployment(tmp_path, tiny_models)
    child = _child(_store(dep))
    os.kill(dep.server.pid, signal.SIGKILL)
    dep.server.proc.wait(timeout=30)
    wait_for(lambda: _gone(child), timeout=60, what="the orphaned worker child to notice and exit")


def test_a_dead_worker_child_is_recovered_at_once(tmp_path: Path, tiny_models: Path) -> None:
    dep = start_deployment(tmp_path, tiny_models, DARKROOM_LEASE_S=str(LEASE_S))
    store = _store(dep)
    child = _child(store)
    # A spare worker, loaded, beside serve's child; paused (SIGSTOP) while the child claims the
    # request, so that the child holds it whatever the machine's speed.
    spare = Process(["worker", "--model", "tiny-slow"], dep.env, tmp_path / "spare.log").start()
    try:
        wait_for(lambda: len(store.list_workers()) >= 2, timeout=120, what="the spare worker")
        os.kill(spare.pid, signal.SIGSTOP)
        try:
            request_id = dep.a.submit("tiny-slow", steps=2000)["request_id"]
            wait_for(lambda: (r := store.get_request(request_id)).status.value == "processing" and r, timeout=60,
                     what="the request to start")
        finally:
            os.kill(spare.pid, signal.SIGCONT)
        assert "-serve" in store.get_request(request_id).lease_owner
        killed_at = time.time()
        os.kill(child, signal.SIGKILL)
        again = wait_for(lambda: (r := store.get_request(request_id)).attempts == 2 and r.started_at and r,
                         timeout=120, what="the second attempt")
        # Requeued on the supervisor's report of the death, not after the lease (30 s):
        assert again.started_at - killed_at < LEASE_S / 2, again.started_at - killed_at
        dep.a.post(f"/requests/{request_id}/cancel")  # 2000 steps: no need to wait them out
        assert Api(dep.server.url, dep.a.key).wait(request_id, timeout=300)["status"] in ("cancelled", "success")
    finally:
        spare.stop()
        dep.server.stop()


@pytest.mark.parametrize("dead_after_s", [6.0])
def test_a_slow_but_alive_worker_keeps_its_request(tmp_path: Path, tiny_models: Path, dead_after_s: float) -> None:
    """A generation longer than worker_dead_after_s: the worker's heartbeat thread keeps saying it
    is alive, so another worker's sweep leaves its request alone (exactly once)."""
    from test_worker_faults import _Running, _submit, _wait_ended

    from darkroom.engines import create_engine
    from darkroom.worker.runner import build_worker

    settings = Settings(data_dir=tmp_path / "data", models_file=tiny_models, worker_models=["tiny"],
                        image_moderation="fallback", worker_dead_after_s=dead_after_s)
    store = Store.from_settings(settings)
    store.migrate()
    key, _ = store.create_key("k")

    class Slow:
        """The real engine, each step held back, so one generation takes ~3x dead_after_s."""

        def __init__(self, engine) -> None:
            self.engine, self.model_id = engine, engine.model_id

        def load(self) -> None:
            self.engine.load()

        def generate(self, jobs, on_step, **options):
            def slow_step(*args, **kwargs):
                time.sleep(3 * dead_after_s / jobs[0].steps)
                return on_step(*args, **kwargs)
            return self.engine.generate(jobs, slow_step, **options)

        def close(self) -> None:
            self.engine.close()

    sweeper = build_worker(settings.model_copy(update={"worker_models": ["tiny-edit"]}), store=store)
    slow = build_worker(settings, store=store)
    slow.engine_factory = lambda spec, device: Slow(create_engine(spec, device))
    with _Running([sweeper]):
        wait_for(lambda: store.active_workers("tiny-edit") >= 1, timeout=120, what="the sweeper")
        with _Running([slow]):
            ended = _wait_ended(store, _submit(store, key.id, steps=6))
    assert ended.status.value == "success" and ended.attempts == 1, ended

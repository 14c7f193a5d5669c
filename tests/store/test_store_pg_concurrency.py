"""Concurrent submitters on a real database, and the store across a PostgreSQL restart.

PostgreSQL runs at READ COMMITTED, where a submit's checks (count the key's requests, look
up its idempotency key) and its insert could interleave with another submit's: the submit
locks its key's row first (``keys.lock_key``). The limit and idempotency races run on both
backends (SQLite serializes writers with BEGIN IMMEDIATE); the rest is PostgreSQL's:
sessions cut mid-transaction and at COMMIT, an unreachable server, an exhausted pool, and
a restart under load.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from darkroom.domain import SubmitOptions
from darkroom.errors import Conflict, NotFound, RateLimited, StoreUnavailable
from darkroom.settings import Settings
from darkroom.store import Limits, Store, database, keys
from darkroom.store import requests as requests_
from darkroom.store.store import Submitted
from darkroom.testing.postgres import PostgresCluster

N_SUBMITTERS = 20

#: PostgreSQL only: the ``store`` fixture (tests/store/conftest.py) on that backend alone.
postgres_only = pytest.mark.parametrize("backend", ["postgresql"])


def _race(n: int, submit: Callable[[int], Any]) -> list[Any]:
    """``submit(i)`` for i in range(n), each on its own thread, released together; the results,
    an exception standing for its call's result."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = submit(i)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def _kinds(results: list[Any]) -> Counter[str]:
    return Counter("created" if isinstance(r, Submitted) and r.created else
                   "replayed" if isinstance(r, Submitted) else type(r).__name__ for r in results)


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


# -- per-key limits ---------------------------------------------------------------------


def test_concurrent_submits_respect_max_in_flight(store: Store, key_id: str, other_key_id: str) -> None:
    limits = Limits(max_in_flight=3)
    results = _race(N_SUBMITTERS, lambda i: store.submit_request(key_id, "m", {"i": i}, options=SubmitOptions(),
                                                                   limits=limits))
    assert _kinds(results) == {"created": 3, "RateLimited": N_SUBMITTERS - 3}, results
    assert store.count_requests() == 3
    # The key's limit is its own: another key still submits.
    assert store.submit_request(other_key_id, "m", {}, options=SubmitOptions(), limits=limits).created


def test_concurrent_submits_respect_rate_per_minute(store: Store, key_id: str) -> None:
    limits = Limits(rate_per_minute=3)
    results = _race(N_SUBMITTERS, lambda i: store.submit_request(key_id, "m", {"i": i}, options=SubmitOptions(),
                                                                   limits=limits))
    assert _kinds(results) == {"created": 3, "RateLimited": N_SUBMITTERS - 3}, results
    assert all(r.retry_after >= 1 for r in results if isinstance(r, RateLimited))
    assert store.count_requests() == 3


CHILD = r"""
import json, sys, threading
from darkroom.domain import SubmitOptions
from darkroom.errors import RateLimited
from darkroom.store import Limits, Store

url, key_id, n, max_in_flight = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
store = Store(url)
store.count_requests()  # connected before the start signal
print("ready", flush=True)
sys.stdin.readline()
out = [None] * n
def run(i):
    try:
        s = store.submit_request(key_id, "m", {"i": i}, options=SubmitOptions(), limits=Limits(max_in_flight=max_in_flight))
        out[i] = s.request.id
    except RateLimited:
        out[i] = "limited"
threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out), flush=True)
store.close()
"""


@postgres_only
def test_submits_from_several_processes_respect_max_in_flight(store: Store, key_id: str) -> None:
    """4 processes (4 engines, 4 pools) x 5 threads submit for one key at once: 3 pass."""
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, store.url, key_id, "5", "3"], text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        for p in procs:  # as close together as the pipes allow
            p.stdin.write("go\n")
            p.stdin.flush()
        outcomes = [o for p in procs for o in json.loads(p.communicate(timeout=60)[0])]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs)
    created = [o for o in outcomes if o != "limited"]
    assert len(created) == 3 and len(outcomes) == 20
    assert {r.id for r in store.list_requests(key_id).items} == set(created)


# -- idempotency keys -------------------------------------------------------------------


def test_concurrent_same_idempotency_key_creates_one_request(store: Store, key_id: str) -> None:
    opts = SubmitOptions(idempotency_key="same")
    results = _race(10, lambda i: store.submit_request(key_id, "m", {"p": 1}, options=opts, request_hash="h"))
    assert _kinds(results) == {"created": 1, "replayed": 9}, results
    assert len({r.request.id for r in results}) == 1
    assert store.count_requests() == 1


def test_concurrent_same_idempotency_key_different_bodies_conflict(store: Store, key_id: str) -> None:
    opts = SubmitOptions(idempotency_key="same")
    results = _race(10, lambda i: store.submit_request(key_id, "m", {"p": i}, options=opts, request_hash=f"h{i}"))
    assert _kinds(results) == {"created": 1, "Conflict": 9}, results
    assert all(r.code == "idempotency_conflict" for r in results if isinstance(r, Conflict))
    assert store.count_requests() == 1


def test_insert_tells_a_taken_idempotency_key_from_a_missing_key(store: Store, key_id: str) -> None:
    """The unique index and the foreign key both refuse an INSERT; only one means "no API key"."""
    opts = SubmitOptions(idempotency_key="k")
    store.submit_request(key_id, "m", {}, options=opts, request_hash="h")
    with pytest.raises(requests_.IdempotencyKeyTaken) as err, store._write() as conn:
        requests_.insert_request(conn, key_id, "m", {}, options=opts, request_hash="h")
    assert isinstance(err.value, Conflict) and not isinstance(err.value, NotFound)
    assert err.value.code == "idempotency_conflict"
    with pytest.raises(NotFound), store._write() as conn:
        requests_.insert_request(conn, "no-such-key", "m", {}, options=SubmitOptions(idempotency_key="x"))
    with pytest.raises(NotFound, match="no API key"):
        store.submit_request("no-such-key", "m", {}, options=SubmitOptions(idempotency_key="x"))


def _wait_for_lock_wait(url: str, timeout: float = 10.0) -> None:
    """Until a session of ``url``'s database waits for a lock."""
    admin = sa.make_url(url)
    deadline = time.monotonic() + timeout
    with psycopg.connect(host=admin.host, port=admin.port, user=admin.username, dbname=admin.database,
                         autocommit=True) as c:
        while time.monotonic() < deadline:
            waiting = c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'").fetchone()[0]
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("no session started waiting for a lock")


@postgres_only
def test_a_lost_idempotency_race_replays_the_winner(store: Store, key_id: str) -> None:
    """A submit whose INSERT loses the unique-index race (here to a request inserted without
    the key's lock, in a transaction still open when the submit looks) answers with the
    winner, not "no API key": it runs again and its new lookup finds the committed winner."""
    opts = SubmitOptions(idempotency_key="race")
    result: list[Any] = []
    with store._write() as winner:
        first = requests_.insert_request(winner, key_id, "m", {}, options=opts, request_hash="h")
        thread = threading.Thread(target=lambda: result.append(
            _outcome(lambda: store.submit_request(key_id, "m", {}, options=opts, request_hash="h"))))
        thread.start()
        _wait_for_lock_wait(store.url)  # its INSERT waits on the unique index for our commit
    thread.join(30)
    (loser,) = result
    assert isinstance(loser, Submitted), loser
    assert loser.created is False and loser.request.id == first.id
    assert store.count_requests() == 1


@postgres_only
def test_one_keys_lock_does_not_hold_up_another_key(store: Store, key_id: str, other_key_id: str) -> None:
    done: dict[str, float] = {}

    def submit(k: str) -> None:
        store.submit_request(k, "m", {}, options=SubmitOptions())
        done[k] = time.monotonic()

    with store._write() as conn:
        assert keys.lock_key(conn, key_id)  # a submit of key_id in progress
        mine = threading.Thread(target=submit, args=(key_id,))
        theirs = threading.Thread(target=submit, args=(other_key_id,))
        mine.start()
        theirs.start()
        theirs.join(10)
        assert other_key_id in done  # not held up
        _wait_for_lock_wait(store.url)
        assert key_id not in done  # waits for the key's lock
        released = time.monotonic()
    mine.join(10)
    assert done[key_id] >= released


# -- transient failures -----------------------------------------------------------------


def _terminate(dbapi_connection: Any, url: str) -> None:
    """Cut a session from the server side, as a restart or failover does, and wait until it is gone."""
    admin = sa.make_url(url)
    with psycopg.connect(host=admin.host, port=admin.port, user=admin.username, dbname="postgres",
                         autocommit=True) as c:
        c.execute("SELECT pg_terminate_backend(%s, 5000)", (dbapi_connection.info.backend_pid,))


@postgres_only
def test_a_submit_cut_before_commit_is_run_again(store: Store, key_id: str) -> None:
    inserts: list[int] = []

    def cut_first_insert(conn, cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO requests"):
            inserts.append(1)
            if len(inserts) == 1:
                _terminate(cursor.connection, store.url)

    sa.event.listen(store._engine, "before_cursor_execute", cut_first_insert)
    try:
        submitted = store.submit_request(key_id, "m", {}, options=SubmitOptions(idempotency_key="i"),
                                         request_hash="h")
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", cut_first_insert)
    assert submitted.created and len(inserts) == 2
    assert [r.id for r in store.list_requests(key_id).items] == [submitted.request.id]


@postgres_only
def test_a_submit_cut_at_commit_is_not_run_again(store: Store, key_id: str) -> None:
    """The COMMIT may have been applied: running the submit again could queue it twice."""
    inserts: list[int] = []

    def count(conn, cursor, statement, *_args) -> None:
        if statement.startswith("INSERT INTO requests"):
            inserts.append(1)

    def cut(conn) -> None:
        _terminate(conn.connection.dbapi_connection, store.url)

    sa.event.listen(store._engine, "before_cursor_execute", count)
    sa.event.listen(store._engine, "commit", cut)
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.submit_request(key_id, "m", {}, options=SubmitOptions())
    finally:
        sa.event.remove(store._engine, "commit", cut)
        sa.event.remove(store._engine, "before_cursor_execute", count)
    assert err.value.status_code == 503 and err.value.code == "store_unavailable" and err.value.retry_after >= 1
    assert isinstance(err.value.__cause__, database.CommitUncertain)
    assert len(inserts) == 1  # not run again
    assert store.count_requests() == 0  # the server never got the COMMIT: rolled back


@postgres_only
def test_reads_run_again_after_a_cut_connection(store: Store, key_id: str) -> None:
    request = store.submit_request(key_id, "m", {}, options=SubmitOptions()).request
    cuts: list[int] = []

    def cut_first_select(conn, cursor, statement, *_args) -> None:
        if statement.startswith("SELECT requests.") and not cuts:
            cuts.append(1)
            _terminate(cursor.connection, store.url)

    sa.event.listen(store._engine, "before_cursor_execute", cut_first_select)
    try:
        assert store.get_request(request.id).id == request.id
    finally:
        sa.event.remove(store._engine, "before_cursor_execute", cut_first_select)
    assert cuts == [1]


@pytest.mark.postgres
def test_an_unreachable_database_is_store_unavailable(pg_cluster: PostgresCluster) -> None:
    """Retries are bounded; then a 503-mapped error, not the driver's OperationalError."""
    dead = sa.make_url(pg_cluster.admin_url("nothing")).set(port=_closed_port())
    store = Store(dead.render_as_string(hide_password=False))
    store.retry_budget_s = 0.3
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as err:
            store.get_request("x")
        assert isinstance(err.value.__cause__, sa.exc.OperationalError)
        with pytest.raises(StoreUnavailable):
            store.submit_request("k", "m", {}, options=SubmitOptions())
        with pytest.raises(StoreUnavailable):
            store.authenticate("dr_secret")
        assert time.monotonic() - started < 10
    finally:
        store.close()


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once it is closed


@pytest.mark.postgres
def test_pool_is_sized_by_settings_and_an_exhausted_pool_is_store_unavailable(
        pg_cluster: PostgresCluster, tmp_path) -> None:
    url = pg_cluster.new_database()
    settings = Settings(data_dir=tmp_path, database_url=url, db_pool_size=1, db_max_overflow=0,
                        db_pool_timeout_s=0.2)
    store = Store.from_settings(settings)
    store.migrate()
    try:
        pool = store._engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout, pool._pre_ping) == (1, 0, 0.2, True)
        with store._engine.connect(), pytest.raises(StoreUnavailable, match="pool"):  # holding the only connection
            store.count_requests()
        assert store.count_requests() == 0
    finally:
        store.close()
    # SQLite keeps SQLAlchemy's pool whatever the settings say.
    sqlite = Store.from_settings(Settings(data_dir=tmp_path / "s", db_pool_size=1, db_max_overflow=0))
    assert sqlite.backend == "sqlite" and sqlite._engine.pool.size() == 5
    sqlite.close()


def test_store_unavailable_answers_503_with_retry_after() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from darkroom.api.errors import install_error_handlers

    app = FastAPI()
    install_error_handlers(app)

    @app.get("/x")
    def fail() -> None:
        raise StoreUnavailable("the database is unavailable", retry_after=7)

    response = TestClient(app).get("/x")
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "store_unavailable"


def _until(condition: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_reads_and_submits_survive_a_postgres_restart(pg_cluster: PostgresCluster, mode: str) -> None:
    """pg_ctl restart (``fast``: sessions cut, clean stop; ``immediate``: a crash, recovery
    from the WAL) while one thread reads in a loop and another submits: no read fails, a
    submit either succeeds or raises StoreUnavailable, and every submit answered as created
    is stored."""
    store = Store(pg_cluster.new_database())
    store.migrate()
    key, secret = store.create_key("k")
    known = store.submit_request(key.id, "m", {}, options=SubmitOptions()).request
    stop = threading.Event()
    restarted = threading.Event()
    reads = Counter[str]()
    submits = Counter[str]()
    read_errors: list[BaseException] = []
    created: list[str] = []
    unavailable: list[str] = []
    submit_errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                assert store.get_request(known.id).id == known.id
                assert store.list_requests(key.id, limit=1).total >= 1
                assert store.queue_position(known.id) is not None
                assert store.authenticate(secret).id == key.id
                store.count_requests()
                store.active_workers()
                reads["after" if restarted.is_set() else "before"] += 1
            except BaseException as exc:  # noqa: BLE001
                read_errors.append(exc)

    def submitter() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            idempotency_key = f"s{i}"
            try:
                submitted = store.submit_request(key.id, "m", {"i": i},
                                                 options=SubmitOptions(idempotency_key=idempotency_key),
                                                 request_hash="h")
                created.append(submitted.request.id)
                submits["after" if restarted.is_set() else "before"] += 1
            except StoreUnavailable:
                unavailable.append(idempotency_key)
            except BaseException as exc:  # noqa: BLE001
                submit_errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=submitter)]
    for t in threads:
        t.start()
    try:
        _until(lambda: reads["before"] and submits["before"])
        pg_cluster.restart(mode)
        restarted.set()
        _until(lambda: reads["after"] >= 3 and submits["after"] >= 3)  # both got through again
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    try:
        assert not read_errors, read_errors
        assert not submit_errors, submit_errors
        assert reads["after"] >= 3 and submits["after"] >= 3, (reads, submits)
        stored = {r.id for r in store.list_requests(key.id, limit=100_000).items}
        assert set(created) <= stored  # nothing answered as created is lost
        # A submit that ended unavailable is resolved by resending it: once, never twice.
        for idempotency_key in unavailable:
            again = store.submit_request(key.id, "m", {}, options=SubmitOptions(idempotency_key=idempotency_key),
                                         request_hash="h")
            assert again.request.id not in created
        assert store.count_requests() == 1 + len(created) + len(unavailable)
    finally:
        store.close()
        store.wakeup.close()

"""The measurements of ``bench.queue`` (what each figure means: that module's docstring).

Each ``measure_*`` function returns ``(figures, raw)``: the table's rows and the numbers behind them.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench import _fill
from bench._harness import (
    MODEL,
    PROMPT,
    Backend,
    BareServer,
    Deployment,
    Figure,
    Target,
    load,
    log,
    percentile,
    summary,
    torch_import_floor_mib,
)
from darkroom.client import Client

DONE = ("success", "failed", "cancelled")
Raw = dict[str, Any]
Result = tuple[list[Figure], Raw]


@dataclass(frozen=True)
class Config:
    """Sizes of every figure; ``quick()`` is a smoke-test version."""

    claim_n: int = 40  # sequential requests waited for with the SDK
    poll_n: int = 20  # ... and with plain httpx polling every poll_s
    poll_s: float = 0.002
    claim_steps: int = 1
    tput_steps: int = 4
    tput_concurrency: int = 8
    tput_c1_s: float = 10.0
    tput_cn_s: float = 12.0
    load_s: float = 5.0  # each wrk run
    load_connections: int = 8
    depth_small: int = 10
    depth_big: int = 100_000
    depth_gets: int = 200  # sequential GETs per request measured, at most ...
    depth_get_s: float = 6.0  # ... or for this long (a slow read gets fewer samples)
    fill_procs: int = 2

    @classmethod
    def quick(cls) -> Config:
        return cls(claim_n=8, poll_n=5, tput_c1_s=4.0, tput_cn_s=5.0, load_s=2.0, depth_big=5_000, depth_gets=50,
                   depth_get_s=3.0)


# -- requests, one at a time ---------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One finished request: what the client saw end to end, and the worker's own timings."""

    e2e_ms: float
    timings: dict[str, float]

    @property
    def overhead_ms(self) -> float:
        """End to end minus what the engine and the encode/store step spent."""
        return self.e2e_ms - self.timings.get("engine_ms", 0.0) - self.timings.get("encode_store_ms", 0.0)


def _payload(steps: int, seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "steps": steps, "seed": seed}


def _timings(status: str, outcome: Any, request_id: str) -> dict[str, float]:
    if status != "success":
        raise RuntimeError(f"request {request_id} ended {status}: {outcome}")
    timings = (outcome or {}).get("timings") or {}
    return {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}


def sdk_request(client: Client, steps: int, seed: int) -> Sample:
    """Submit and ``Client.wait`` with its default behaviour."""
    started = time.perf_counter()
    submitted = client.submit(MODEL, **_payload(steps, seed))
    final = client.wait(submitted)
    e2e = (time.perf_counter() - started) * 1000
    return Sample(e2e, _timings(final.status.value, final.outcome, final.request_id))


def polled_request(http: httpx.Client, steps: int, seed: int, poll_s: float) -> Sample:
    """Submit and GET the status every ``poll_s`` with plain httpx until it ends."""
    started = time.perf_counter()
    response = http.post("/requests", json={"model": MODEL, "payload": _payload(steps, seed)})
    response.raise_for_status()
    request_id = response.json()["request_id"]
    while True:
        body = http.get(f"/requests/{request_id}").raise_for_status().json()
        if body["status"] in DONE:
            break
        time.sleep(poll_s)
    e2e = (time.perf_counter() - started) * 1000
    return Sample(e2e, _timings(body["status"], body.get("outcome"), request_id))


def warm_up(dep: Deployment, n: int = 2) -> str:
    """Run ``n`` requests (the worker loads its model on the first); return the last one's id."""
    with Client(dep.url, api_key=dep.key) as client:
        for seed in range(1, n + 1):
            submitted = client.submit(MODEL, **_payload(1, seed))
            final = client.wait(submitted, timeout=300)
            _timings(final.status.value, final.outcome, final.request_id)
    return submitted.request_id


# -- 1. claim latency and queue overhead ----------------------------------------------------


def _timing_summaries(samples: list[Sample]) -> Raw:
    keys = sorted({k for s in samples for k in s.timings})
    out = {k: summary([s.timings[k] for s in samples if k in s.timings]) for k in keys}
    return {**out, "e2e_ms": summary([s.e2e_ms for s in samples]),
            "overhead_ms": summary([s.overhead_ms for s in samples])}


def _engine(samples: list[Sample], q: float) -> float:
    return percentile([s.timings.get("engine_ms", float("nan")) for s in samples], q)


def measure_claim(dep: Deployment, cfg: Config) -> Result:
    """Claim latency (queued_ms) and queue overhead, sequential requests, SDK wait and 2 ms polling."""
    with Client(dep.url, api_key=dep.key) as client:
        sdk = [sdk_request(client, cfg.claim_steps, 100 + i) for i in range(cfg.claim_n)]
    with dep.http() as http:
        polled = [polled_request(http, cfg.claim_steps, 200 + i, cfg.poll_s) for i in range(cfg.poll_n)]
    claim = [s.timings.get("queued_ms", float("nan")) for s in sdk + polled]
    both = sdk + polled
    le5, le10 = Target("value", "<=", 5.0, "p50 <= 5 ms"), Target("value", "<=", 10.0, "p50 <= 10 ms")
    figures = [
        Figure("claim", "claim latency p50", percentile(claim, 50), "ms", _engine(both, 50), "engine p50", le5),
        Figure("claim", "claim latency p99", percentile(claim, 99), "ms", _engine(both, 99), "engine p99"),
        Figure("claim", "overhead p50 (SDK wait)", percentile([s.overhead_ms for s in sdk], 50), "ms",
               _engine(sdk, 50), "engine p50", le10),
        Figure("claim", "overhead p99 (SDK wait)", percentile([s.overhead_ms for s in sdk], 99), "ms",
               _engine(sdk, 99), "engine p99"),
        Figure("claim", f"overhead p50 (httpx poll {cfg.poll_s * 1000:g} ms)",
               percentile([s.overhead_ms for s in polled], 50), "ms", _engine(polled, 50), "engine p50", le10),
        Figure("claim", f"overhead p99 (httpx poll {cfg.poll_s * 1000:g} ms)",
               percentile([s.overhead_ms for s in polled], 99), "ms", _engine(polled, 99), "engine p99"),
    ]
    raw = {"steps": cfg.claim_steps, "sdk": _timing_summaries(sdk), "httpx_poll": _timing_summaries(polled),
           "claim_ms_all": summary(claim)}
    return figures, raw


# -- 3. throughput at concurrency 1 and N -----------------------------------------------------


def closed_loop(dep: Deployment, concurrency: int, seconds: float, steps: int) -> Raw:
    """``concurrency`` threads, each submitting and waiting (SDK) again and again for ``seconds``.

    No new request starts after ``seconds``; images/s = every finished request / (the last one's
    end - the start), so the queue is drained before the next phase and a window shorter than
    one request still measures something. With one worker the queue stays full to the end.
    """
    finished: list[tuple[float, float]] = []  # (end, latency ms)
    failures: list[str] = []
    lock = threading.Lock()
    start = time.perf_counter()
    deadline = start + seconds

    def client_loop(index: int) -> None:
        with Client(dep.url, api_key=dep.key) as client:
            seed = 1000 * (index + 1)
            while time.perf_counter() < deadline:
                seed += 1
                try:
                    sample = sdk_request(client, steps, seed)
                except Exception as exc:  # noqa: BLE001 - counted and reported
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    finished.append((time.perf_counter(), sample.e2e_ms))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max((end for end, _ in finished), default=time.perf_counter()) - start
    return {"concurrency": concurrency, "submit_window_s": seconds, "elapsed_s": round(elapsed, 2),
            "finished": len(finished), "failures": len(failures), "failure_examples": failures[:3],
            "images_per_s": round(len(finished) / elapsed, 3), "latency_ms": summary([lat for _, lat in finished])}


def measure_throughput(dep: Deployment, cfg: Config) -> Result:
    """darkroom-mini images/s at concurrency 1 and N (closed loop), latency at N."""
    one = closed_loop(dep, 1, cfg.tput_c1_s, cfg.tput_steps)
    many = closed_loop(dep, cfg.tput_concurrency, cfg.tput_cn_s, cfg.tput_steps)
    n = cfg.tput_concurrency
    figures = [
        Figure("throughput", f"images/s at concurrency {n}", many["images_per_s"], "img/s", one["images_per_s"],
               "concurrency 1", Target("ratio", ">=", 2.0, ">= 2x conc. 1")),
        Figure("throughput", f"e2e latency p50 at concurrency {n}", many["latency_ms"].get("p50"), "ms",
               one["latency_ms"].get("p50"), "conc. 1 p50"),
        Figure("throughput", f"e2e latency p99 at concurrency {n}", many["latency_ms"].get("p99"), "ms",
               one["latency_ms"].get("p99"), "conc. 1 p99"),
    ]
    return figures, {"steps": cfg.tput_steps, "concurrency_1": one, f"concurrency_{n}": many}


# -- 2. status reads and submits per second -----------------------------------------------------


def _warm(url: str, headers: dict[str, str], n: int = 100) -> None:
    with httpx.Client(headers=headers, timeout=30) as http:
        for _ in range(n):
            http.get(url).raise_for_status()


def measure_reads(dep: Deployment, bare: BareServer, finished_id: str, cfg: Config, workdir: Path) -> Result:
    """Status GETs/s of a finished request and submits/s (no worker), against the bare app's GETs/s."""
    status_url = f"{dep.url}/api/v1/ie/requestqueue/apikey/requests/{finished_id}"
    run = {"seconds": cfg.load_s, "connections": cfg.load_connections, "workdir": workdir}
    _warm(bare.url, dep.headers)
    bare_load = load("GET", bare.url, headers=dep.headers, **run)
    _warm(status_url, dep.headers)
    reads = load("GET", status_url, headers=dep.headers, **run)
    body = {"model": MODEL, "payload": {"prompt": PROMPT, "steps": 1}}
    submits = load("POST", f"{dep.url}/api/v1/ie/requestqueue/apikey/requests", headers=dep.headers, body=body, **run)
    for name, result in (("status reads", reads), ("submits", submits)):
        if result.errors:
            log(f"warning: {result.errors} of {result.requests} {name} failed")
    figures = [
        Figure("reads", "status reads/s (finished request)", round(reads.rps, 1), "req/s", round(bare_load.rps, 1),
               "bare FastAPI", Target("ratio", ">=", 0.40, ">= 0.40x bare")),
        Figure("reads", "submits/s (no worker)", round(submits.rps, 1), "req/s", round(bare_load.rps, 1),
               "bare FastAPI"),
    ]
    raw = {"bare": vars(bare_load), "status_reads": vars(reads), "submits": vars(submits),
           "bare_handler": "async def, returns {'hello': 'world'}"}
    return figures, raw


# -- 5. peak RSS -----------------------------------------------------------------------------------


def measure_rss(api: Raw, worker: Raw | None, bare: Raw) -> Result:
    """VmHWM of the API process (vs the bare app) and the worker (vs an interpreter that imports torch)."""
    floor = torch_import_floor_mib()
    figures = [
        Figure("rss", "API process peak RSS (VmHWM)", api["vmhwm_mib"], "MiB", bare["vmhwm_mib"], "bare FastAPI",
               Target("value", "<=", 250.0, "<= 250 MiB")),
        Figure("rss", "API process maps libtorch", bool(api["libtorch"]), "",
               target=Target("value", "==", False, "never")),
    ]
    if worker is not None:
        figures.append(Figure("rss", "worker peak RSS (VmHWM)", worker["vmhwm_mib"], "MiB", floor, "import torch",
                              Target("value", "<=", 1536.0, "<= 1.5 GiB")))
    return figures, {"api": api, "worker": worker, "bare": bare, "torch_import_floor_mib": floor}


# -- 4. status reads with a deep queue ------------------------------------------------------------


def timed_gets(http: httpx.Client, request_id: str, cfg: Config) -> tuple[list[float], Any]:
    """Sequential GETs of one request: latencies (ms) and the last answer's queue_position."""
    for _ in range(5):  # warm the connection and the server's caches
        http.get(f"/requests/{request_id}").raise_for_status()
    latencies: list[float] = []
    body: dict[str, Any] = {}
    stop = time.perf_counter() + cfg.depth_get_s
    while len(latencies) < cfg.depth_gets and (time.perf_counter() < stop or len(latencies) < 5):
        started = time.perf_counter()
        body = http.get(f"/requests/{request_id}").raise_for_status().json()
        latencies.append((time.perf_counter() - started) * 1000)
    if body.get("status") != "queued":
        raise RuntimeError(f"request {request_id} is {body.get('status')}, expected queued")
    return latencies, body.get("queue_position")


def fill(url: str, key_id: str, payload: dict[str, Any], count: int, procs: int) -> float:
    """Queue ``count`` requests from ``procs`` processes; returns the seconds it took."""
    started = time.perf_counter()
    chunks = [count // (procs * 4) + (1 if i < count % (procs * 4) else 0) for i in range(procs * 4)]
    done = 0
    with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_fill.insert_many, url, key_id, MODEL, payload, n) for n in chunks if n]
        for future in futures:
            done += future.result()
            log(f"  queued {done}/{count} ({done / (time.perf_counter() - started):.0f}/s)")
    return time.perf_counter() - started


def _depth_reads(http: httpx.Client, head: str, end: str, cfg: Config) -> Raw:
    out: Raw = {}
    for name, request_id in (("head", head), ("end", end)):
        latencies, position = timed_gets(http, request_id, cfg)
        out[name] = {"request_id": request_id, "queue_position": position, "latency_ms": summary(latencies)}
    return out


def measure_depth(backend: Backend, workdir: Path, cfg: Config) -> Result:
    """Status GET latency of the queue's head and end request at ``depth_big`` queued vs ``depth_small``."""
    from darkroom.settings import Settings
    from darkroom.store import Store

    dep = Deployment.start(backend, workdir / f"depth-{backend.name}", worker=False)
    try:
        settings = Settings(data_dir=Path(dep.env["DARKROOM_DATA_DIR"]),
                            database_url=dep.env.get("DARKROOM_DATABASE_URL"))
        store = Store.from_settings(settings)
        key = store.authenticate(dep.key)
        assert key is not None, "the bench key does not authenticate"
        insert = _fill.inserter(store)
        with dep.http() as http:
            head = http.post("/requests", json={"model": MODEL, "payload": {"prompt": PROMPT}}).raise_for_status()
            head_id = head.json()["request_id"]
            stored = store.get_request(head_id)
            assert stored is not None
            payload = dict(stored.payload)
            for _ in range(cfg.depth_small - 2):
                insert(key.id, MODEL, payload)
            small_end = insert(key.id, MODEL, payload).id
            small = _depth_reads(http, head_id, small_end, cfg)
            fill_s = fill(settings.resolved_database_url(), key.id, payload, cfg.depth_big - cfg.depth_small - 1,
                          cfg.fill_procs)
            big_end = insert(key.id, MODEL, payload).id
            queued = store.count_requests()
            big = _depth_reads(http, head_id, big_end, cfg)
        store.close()
    finally:
        dep.stop()
    figures = []
    for where in ("end", "head"):
        for q in ("p50", "p99"):
            target = Target("ratio", "<=", 1.5, "~1x (<= 1.5x)") if q == "p50" else None
            figures.append(Figure("depth", f"status read {where} {q} @ {cfg.depth_big} queued",
                                  big[where]["latency_ms"][q], "ms", small[where]["latency_ms"][q],
                                  f"@ {cfg.depth_small}", target))
    raw = {"small": small, "big": big, "requests_stored": queued, "fill_s": round(fill_s, 1),
           "fill_per_s": round((cfg.depth_big - cfg.depth_small - 1) / fill_s, 1), "fill_processes": cfg.fill_procs}
    return figures, raw

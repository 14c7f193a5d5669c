"""Benchmark darkroom's request queue: prints a table and writes bench/results/queue*.json.

    python -m bench.queue                          # every figure, SQLite and PostgreSQL (~10 min*)
    python -m bench.queue --backend sqlite --only claim,reads
    python -m bench.queue --quick                  # a smoke test of the suite itself (~3 min*)
    python -m bench.queue --ref HEAD               # measure a commit while src/ is mid-edit

(*) on 2 otherwise idle cores; half of a full run is filling 100,000 requests, once per backend.
Other work on the machine slows everything and skews the ratios: the JSON records the load
average at the start and end of the run and of each figure.

Every figure is a ratio against a baseline measured in the same run, on the same machine.
Each backend gets fresh data: a SQLite file, or a database in a throwaway PostgreSQL cluster
(fsync on, synchronous_commit at its default). darkroom runs as in production: `darkroom serve
--no-worker` (one uvicorn process) plus one `darkroom worker`, model darkroom-mini, on loopback.

1. claim: N sequential requests (steps 1), each waited for before the next.
   claim latency = the worker's ``outcome.timings.queued_ms`` (queued -> claimed).
   queue overhead = client-observed end to end (before the submit is sent -> the client sees
   success) minus ``engine_ms`` minus ``encode_store_ms``. Measured with the SDK's default
   ``Client.wait`` and, separately, with plain httpx polling the status every 2 ms.
   Baseline: the engine time. Targets: claim p50 <= 5 ms, overhead p50 <= 10 ms.
2. reads: GET /requests/{id} of a finished request, requests/s under `wrk -t1 -c8 -d5s`
   (a Python asyncio load generator without wrk), against a bare FastAPI app returning
   {"hello": "world"} under the same uvicorn settings (python -m bench._bare). Also
   POST /requests/s with no worker running (the queue grows). Target: reads >= 0.40x bare.
3. throughput: darkroom-mini images/s (steps 4) at concurrency 1 and 8, closed loop: each client
   thread submits and waits (SDK) again and again for a fixed time; end-to-end latency at 8.
   Baseline: concurrency 1. Target: >= 2x.
4. depth: p50/p99 latency of sequential GETs of the first (head) and the last (end) queued
   request with 100,000 requests queued, against 10 queued; no worker. The queue is filled
   through public Store methods (insert_request, one transaction each, 2 processes).
   Target: ~1x (met at <= 1.5x).
5. rss: peak RSS (/proc/PID/status VmHWM) of the API process after the reads and submits,
   against the bare app's, and of the worker after the claim and throughput requests, against
   an interpreter that only imports torch; whether the API process maps libtorch
   (/proc/PID/maps). Targets: API <= 250 MiB, worker <= 1.5 GiB, API never loads torch.
"""

from __future__ import annotations

import sys

if __name__ == "queue":  # pragma: no cover
    # `python bench/bench_mini.py` puts bench/ first on sys.path, where this file would stand in
    # for the standard library's `queue` in everything that script imports: hand over to it.
    import importlib
    import os

    _here = os.path.dirname(os.path.abspath(__file__))
    _saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    try:
        del sys.modules["queue"]
        sys.modules["queue"] = importlib.import_module("queue")  # what the importer hands out
    finally:
        sys.path[:] = _saved


def main(argv: list[str] | None = None) -> int:
    from bench._suite import main as run

    return run(argv, doc=__doc__ or "")


if __name__ == "__main__":
    sys.exit(main())

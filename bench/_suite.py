"""``python -m bench.queue``: the command line, the run per backend, the table and the JSON files.

Nothing here imports darkroom at module level: with ``--ref`` the suite re-runs itself on a
``git archive`` of that ref (``PYTHONPATH`` first), and only that run may import darkroom.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports wait until --ref has pinned darkroom (see main)
    from bench._figures import Config
    from bench._harness import Backend, Figure

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
FIGURES = ("claim", "reads", "throughput", "depth", "rss")
BACKENDS = ("sqlite", "postgresql")
PINNED = "DARKROOM_BENCH_PINNED_SRC"  # set in the re-run on a --ref export: its src/ dir


def parse_args(argv: list[str] | None, doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.queue", description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(FIGURES),
                        help=f"comma-separated figures to measure, of {','.join(FIGURES)} (default: all)")
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both", help="default: both")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not figures to quote")
    parser.add_argument("--ref", help="measure this git ref (a `git archive` of its src/ and models/) instead of "
                                      "the working tree, e.g. HEAD while src/ is mid-edit")
    parser.add_argument("--json", type=Path, default=RESULTS / "queue.json",
                        help="the combined results (default: bench/results/queue.json); each backend's also "
                             "goes beside it, to <stem>-<backend>.json (queue-sqlite.json, ...)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (data, server logs)")
    args = parser.parse_args(argv)
    args.figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = set(args.figures) - set(FIGURES)
    if unknown:
        parser.error(f"--only: unknown figure(s) {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")
    args.backends = list(BACKENDS) if args.backend == "both" else [args.backend]
    return args


# -- --ref: run on an export of a git ref -------------------------------------------------------


def export_ref(ref: str, dest: Path) -> None:
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "src", "models"], cwd=REPO,
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")


def run_on_ref(ref: str, argv: list[str]) -> int:
    """Re-run this suite with ``PYTHONPATH`` = an export of ``ref``'s src/ (children inherit it)."""
    dest = Path(tempfile.mkdtemp(prefix="darkroom-bench-ref-"))
    try:
        export_ref(ref, dest)
        src = str(dest / "src")
        env = {**os.environ, PINNED: src,
               "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
        return subprocess.run([sys.executable, "-m", "bench.queue", *argv], cwd=REPO, env=env).returncode
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def check_pinned() -> None:
    import darkroom

    pinned = os.environ.get(PINNED)
    if pinned and not Path(darkroom.__file__).resolve().is_relative_to(Path(pinned).resolve()):
        raise SystemExit(f"darkroom was imported from {darkroom.__file__}, not from the export {pinned}")


# -- one backend ----------------------------------------------------------------------------------


class BackendRun:
    """The figures of one backend; a figure that fails is recorded as an error and the rest go on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.figures: list[Figure] = []
        self.raw: dict[str, Any] = {}
        self.errors: dict[str, str] = {}

    def step(self, figure: str, fn: Callable[[], tuple[list[Figure], dict[str, Any]]],
             logs: Callable[[], str] = str) -> None:
        from bench._harness import loadavg, log

        started, load_before = time.monotonic(), loadavg()[0]
        log(f"{self.name}: {figure} ...")
        try:
            figures, raw = fn()
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the others
            self.errors[figure] = f"{type(exc).__name__}: {exc}"
            log(f"{self.name}: {figure} FAILED: {exc}\n{logs()}")
            return
        self.figures += figures
        # The 1-minute load average before and after: other work on a shared machine shows here.
        self.raw[figure] = {**raw, "seconds": round(time.monotonic() - started, 1),
                            "loadavg_1m": [load_before, loadavg()[0]]}
        log(f"{self.name}: {figure} done in {time.monotonic() - started:.0f} s")

    def as_json(self) -> dict[str, Any]:
        return {"backend": self.name, "figures": [f.as_json() for f in self.figures], "raw": self.raw,
                "errors": self.errors}


def run_main_deployment(run: BackendRun, backend: Backend, figures: list[str], cfg: Config, workdir: Path) -> None:
    """claim, throughput, reads and rss share one deployment: API + worker, then API alone."""
    from bench import _figures as fig
    from bench._harness import BareServer, Deployment, peak_rss

    dep = Deployment.start(backend, workdir / f"main-{backend.name}", worker=True)
    bare: BareServer | None = None
    try:
        finished_id = fig.warm_up(dep)
        if "claim" in figures:
            run.step("claim", lambda: fig.measure_claim(dep, cfg), dep.log_tails)
        if "throughput" in figures:
            run.step("throughput", lambda: fig.measure_throughput(dep, cfg), dep.log_tails)
        assert dep.worker is not None
        worker_rss = peak_rss(dep.worker.pid) if dep.worker.alive() else None
        dep.stop_worker()
        if not {"reads", "rss"} & set(figures):
            return
        bare = BareServer(dep.log_level, workdir / f"bare-{backend.name}.log").start()
        if "reads" in figures:
            run.step("reads", lambda: fig.measure_reads(dep, bare, finished_id, cfg, workdir), dep.log_tails)
        if "rss" in figures:
            run.step("rss", lambda: fig.measure_rss(peak_rss(dep.api.pid), worker_rss, peak_rss(bare.proc.pid)),
                     dep.log_tails)
    finally:
        if bare is not None:
            bare.stop()
        dep.stop()


def run_backend(name: str, figures: list[str], cfg: Config, workdir: Path) -> BackendRun:
    from bench import _figures as fig
    from contextlib import ExitStack

    from bench._harness import Backend, log
    from darkroom.testing.postgres import throwaway_cluster

    run = BackendRun(name)
    stack = ExitStack()
    try:
        # fsync on: the benchmark's commits must be durable ones.
        cluster = stack.enter_context(throwaway_cluster(durable=True)) if name == "postgresql" else None
        backend = Backend(name, cluster)
        if {"claim", "throughput", "reads", "rss"} & set(figures):
            guarded(run, "deployment", lambda: run_main_deployment(run, backend, figures, cfg, workdir))
        if "depth" in figures:
            run.step("depth", lambda: fig.measure_depth(backend, workdir, cfg))
    except Exception as exc:  # noqa: BLE001 - no PostgreSQL: the other backend's figures still count
        run.errors["cluster"] = f"{type(exc).__name__}: {exc}"
        log(f"{name}: FAILED to start PostgreSQL: {exc}")
    finally:
        stack.close()
    return run


def guarded(run: BackendRun, what: str, fn: Callable[[], None]) -> None:
    """Run ``fn``; a failure (a deployment that does not start) becomes ``run.errors[what]``."""
    from bench._harness import log

    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded, and the next figures still run
        run.errors[what] = f"{type(exc).__name__}: {exc}"
        log(f"{run.name}: {what} FAILED: {exc}")


# -- output ---------------------------------------------------------------------------------------


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


def report(runs: list[BackendRun], header: dict[str, Any], json_path: Path) -> None:
    from bench._harness import table

    code, mach = header["code"], header["machine"]
    print(f"darkroom {code['commit']} ({code['src']}); {mach['cores']} cores {mach['cpu_model']}; load average "
          f"{mach['loadavg_at_start'][0]:.1f} at start, {mach['loadavg_at_end'][0]:.1f} at end; {header['date']}")
    print(table([(run.name, f) for run in runs for f in run.figures]))
    for run in runs:
        for figure, error in run.errors.items():
            print(f"{run.name}: {figure} not measured: {error}")
        write_json(backend_path(json_path, run.name), {**header, **run.as_json()})
    write_json(json_path, {**header, "backends": {run.name: run.as_json() for run in runs}})
    print(f"wrote {json_path} and {', '.join(str(backend_path(json_path, r.name)) for r in runs)}")


def backend_path(json_path: Path, backend: str) -> Path:
    """queue.json -> queue-sqlite.json beside it."""
    return json_path.with_name(f"{json_path.stem}-{backend}{json_path.suffix}")


def main(argv: list[str] | None = None, doc: str = "") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv, doc)
    if args.ref and not os.environ.get(PINNED):
        return run_on_ref(args.ref, argv)
    check_pinned()
    from dataclasses import asdict

    from bench._figures import Config
    from bench._harness import code_under_test, loadavg, log, machine, make_workdir, now_utc, remove_workdir

    cfg = Config.quick() if args.quick else Config()
    header = {"suite": "bench.queue", "date": now_utc(), "machine": machine(), "code": code_under_test(args.ref),
              "command": "python -m bench.queue " + " ".join(argv), "quick": args.quick, "config": asdict(cfg)}
    workdir = make_workdir(args.keep)
    started = time.monotonic()
    try:
        runs = [run_backend(name, args.figures, cfg, workdir) for name in args.backends]
    finally:
        remove_workdir(workdir, args.keep)
    header["seconds"] = round(time.monotonic() - started, 1)
    header["machine"]["loadavg_at_end"] = loadavg()
    log(f"suite done in {header['seconds']:.0f} s")
    report(runs, header, args.json)
    return 1 if any(run.errors for run in runs) else 0

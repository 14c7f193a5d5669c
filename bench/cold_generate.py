"""Cold ``darkroom generate``: the README's one-shot command, wall time against the engine's own.

    python -m bench.cold_generate                          # the working tree, 5 cold runs
    python -m bench.cold_generate --ref 27f9931            # and a baseline commit, run by run in turn
    python -m bench.cold_generate --runs 3 --json /tmp/x.json

1. cold runs: ``darkroom generate "a red circle to the left of a blue square" -o out.png``
   (darkroom-mini at its defaults: 8 steps, 1:1, 1024x1024 out), each a new process with a fresh
   data dir (``DARKROOM_DATA_DIR``) and a fresh working directory; nothing is dropped from the OS
   cache. Per run: wall (spawn -> exit), the child's peak RSS (``wait4``'s ru_maxrss), and the
   request's own timings as the store it wrote records them (``outcome.timings``): ``engine_ms``
   (the pipeline call and the upscale to 1024x1024), ``queued_ms`` (submit -> claim: the model
   load), ``prepare_ms`` (prompt moderation), ``encode_store_ms`` (image moderation, PNG, store).
   The figure: wall / engine_ms, and what the rest is. Then the same command once more in the
   same data dir and working directory (``warm_wall_s``: a user's second image, its store
   already migrated; still a new process).
2. phases: one fresh interpreter per variant does what a cold run does, one thing after the
   other, and times each: ``import torch``; ``import diffusers`` (the package, then the FLUX
   pipeline classes); darkroom's store, service and worker modules; opening and migrating the
   store; the pipeline load; the moderation classifiers' load; then the request (claim, prompt
   moderation, generation, image moderation, encode, store) and writing the file, split by
   the outcome's timings. Run back to back, the phases add up to more than a cold run, which
   loads the classifiers beside the model (``darkroom.generate``).
3. floors, in the same run: the wall of ``python -c pass``, of ``python -c "import torch,
   diffusers"`` and of ``python -c "import torch; from diffusers import FluxKontextPipeline"``
   (the pipeline class darkroom-mini needs): what no one-shot generation on this machine can go
   below, before it has loaded or drawn anything.

Target (issue #28): <= 3 s cold on 2 cores. Variants run in turn (A B A B ...) so that other
work on a shared machine falls on each alike; every run records the 1-minute load average.
Results: ``bench/results/cold_generate.json`` (the README's Performance section quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PROMPT = "a red circle to the left of a blue square"
TARGET_S = 3.0
#: The console script ``darkroom``, run from whichever darkroom PYTHONPATH pins.
CLI = "import sys; sys.argv[0] = 'darkroom'; from darkroom.cli import main; sys.exit(main())"
FLOORS = {
    "python_start": "pass",
    "import_torch_diffusers": "import torch, diffusers",
    "import_torch_kontext_pipeline": "import torch; from diffusers import FluxKontextPipeline",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="cold runs per variant (default 5)")
    parser.add_argument("--ref", action="append", default=[],
                        help="also measure this git ref (a `git archive` of its src/ and models/); repeatable")
    parser.add_argument("--label", action="append", default=[],
                        help="a name for each --ref in the JSON, in order (default: the ref itself)")
    parser.add_argument("--refs-only", action="store_true",
                        help="measure only the --ref exports, not the working tree (others' edits in progress)")
    parser.add_argument("--json", type=Path, default=RESULTS / "cold_generate.json")
    parser.add_argument("--phases-child", type=Path, help=argparse.SUPPRESS)  # internal: one phases run
    args = parser.parse_args(argv)
    if args.phases_child:
        return run_phases(args.phases_child)

    from bench._harness import git, loadavg, log, machine, now_utc

    if not args.ref and args.refs_only:
        parser.error("--refs-only needs at least one --ref")

    work = Path(tempfile.mkdtemp(prefix="darkroom-cold-"))
    try:
        variants = {} if args.refs_only else {"working tree": Variant("working tree", None, None)}
        labels = args.label + args.ref[len(args.label):]
        for ref, label in zip(args.ref, labels):
            variants[label] = Variant(label, git("rev-parse", "--short", ref),
                                      export_ref(ref, work / f"ref-{len(variants)}"))
        started = now_utc()
        floors: dict[str, list[float]] = {name: [] for name in FLOORS}
        for i in range(args.runs):
            for variant in variants.values():
                log(f"run {i + 1}/{args.runs}: {variant.name} ...")
                variant.runs.append(cold_run(variant, work / f"run-{i}-{len(variant.runs)}-{id(variant)}"))
                log(f"  {variant.runs[-1]['wall_s']:.2f} s wall, engine {variant.runs[-1]['engine_ms']:.0f} ms")
            for name, code in FLOORS.items():
                floors[name].append(wall_of([sys.executable, "-c", code], env=child_env(None))[0])
        for variant in variants.values():
            log(f"phases: {variant.name} ...")
            variant.phases = phases_of(variant, work / f"phases-{id(variant)}")
        report = build_report(variants, floors, args.runs, started=started, ended=now_utc(),
                              machine=machine(), head=git("rev-parse", "--short", "HEAD"),
                              src_dirty=bool(git("status", "--porcelain", "--", "src")), load_end=loadavg())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nwritten: {args.json}")
    return 0


class Variant:
    """One darkroom under test: the working tree (``src`` None) or an export of a git ref."""

    def __init__(self, name: str, ref: str | None, src: Path | None) -> None:
        self.name, self.ref, self.src = name, ref, src
        self.runs: list[dict[str, Any]] = []
        self.phases: dict[str, Any] = {}


# -- running ----------------------------------------------------------------------------------


def export_ref(ref: str, dest: Path) -> Path:
    """``ref``'s src/ and models/ under ``dest``; returns its src/ (darkroom-mini's registry and
    weights come from the export's models/, which its settings find beside its package)."""
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", "--format=tar", ref, "src", "models"], cwd=REPO,
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def child_env(src: Path | None, **extra: str) -> dict[str, str]:
    """The user's environment without darkroom's own settings; ``src`` first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DARKROOM_") and k != "PYTHONPATH"}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    return {**env, **extra}


def wall_of(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None,
            timeout: float = 600) -> tuple[float, float, str, str]:
    """(wall seconds, peak RSS MiB, stdout, stderr) of one process, spawn to exit."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise TimeoutError(f"{cmd[:3]} ran past {timeout} s")
            time.sleep(0.002)  # polls the child's exit: 2 ms of resolution on a figure of seconds
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} exited {proc.returncode}:\n{stdout}\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss / 1024, stdout, stderr


def cold_run(variant: Variant, root: Path) -> dict[str, Any]:
    from bench._harness import loadavg

    cwd, data = root / "cwd", root / "data"
    cwd.mkdir(parents=True)
    load = loadavg()[0]
    cmd = [sys.executable, "-c", CLI, "generate", PROMPT, "-o", "out.png"]
    env = child_env(variant.src, DARKROOM_DATA_DIR=str(data))
    wall, rss, stdout, stderr = wall_of(cmd, env=env, cwd=cwd)
    outcome = stored_outcome(data, 1)
    image_bytes = (cwd / "out.png").stat().st_size
    warm_wall, _, _, _ = wall_of(cmd, env=env, cwd=cwd)
    warm_engine = stored_outcome(data, 2)["timings"]["engine_ms"]
    timings = outcome["timings"]
    engine = timings["engine_ms"]
    return {"wall_s": round(wall, 3), "engine_ms": engine, "wall_over_engine": round(wall * 1000 / engine, 2),
            "queued_ms": timings["queued_ms"], "prepare_ms": timings["prepare_ms"],
            "encode_store_ms": timings["encode_store_ms"],
            "rest_ms": round(wall * 1000 - engine - timings["encode_store_ms"] - timings["prepare_ms"]
                             - timings["queued_ms"], 1),
            "peak_rss_mib": round(rss, 1), "size": [outcome["width"], outcome["height"]],
            "stdout_lines": len(stdout.splitlines()), "stderr_bytes": len(stderr), "loadavg_1m": load,
            "image_bytes": image_bytes, "warm_wall_s": round(warm_wall, 3), "warm_engine_ms": warm_engine}


def stored_outcome(data_dir: Path, count: int) -> dict[str, Any]:
    """The newest request's outcome in a run's store, which must hold ``count`` requests, all
    successful (read with sqlite3: any schema version)."""
    with sqlite3.connect(data_dir / "darkroom.db") as db:
        rows = db.execute("SELECT status, outcome FROM requests ORDER BY created_at").fetchall()
    if len(rows) != count or any(status != "success" for status, _ in rows):
        raise RuntimeError(f"expected {count} successful requests in {data_dir}, found {rows}")
    return json.loads(rows[-1][1])


def phases_of(variant: Variant, root: Path) -> dict[str, Any]:
    root.mkdir(parents=True)
    out = root / "phases.json"
    wall, rss, _, _ = wall_of([sys.executable, "-m", "bench.cold_generate", "--phases-child", str(out)],
                              env=child_env(variant.src, DARKROOM_DATA_DIR=str(root / "data")), cwd=REPO)
    return {**json.loads(out.read_text()), "process_wall_s": round(wall, 3), "peak_rss_mib": round(rss, 1)}


def run_phases(out: Path) -> int:
    """In a fresh interpreter: a cold run's work, one thing at a time, each timed (seconds)."""
    started = time.perf_counter()
    laps: dict[str, float] = {}
    mark = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        laps[name] = round(now - mark[0], 3)
        mark[0] = now

    import torch  # noqa: F401

    lap("import torch")
    import diffusers  # noqa: F401

    lap("import diffusers (package)")
    from diffusers import FluxKontextPipeline, FluxPipeline  # noqa: F401

    lap("import diffusers' FLUX pipelines")
    from darkroom.service import Service
    from darkroom.settings import Settings
    from darkroom.wakeup import REQUEST
    from darkroom.worker.runner import build_worker

    lap("import darkroom (store, service, worker)")
    settings = Settings()
    service = Service.from_settings(settings)
    spec = service.registry.get(service.registry.default)
    lap("store open + migrate (fresh data dir)")
    worker = build_worker(settings.model_copy(update={"worker_models": [spec.id]}), store=service.store)
    worker.load_engines()
    lap("pipeline load")
    worker.stages.moderator.warm_up()
    lap("moderation classifiers load")
    key, _ = service.store.create_key("bench")
    changes = service.store.wakeup.listen([REQUEST])
    request = service.submit(key, spec.id, {"prompt": PROMPT, "output_format": "png"}).request
    lap("submit")
    worker.run_once()  # claim, prompt moderation, generation; the publish goes to the worker's pool
    while not (done := service.store.get_request(request.id)).status.is_terminal:
        changes.wait(timeout=1.0)
    request_s = time.perf_counter() - mark[0]
    timings = done.outcome["timings"]
    laps["prompt moderation (prepare_ms)"] = round(timings["prepare_ms"] / 1000, 3)
    laps["generation (engine_ms)"] = round(timings["engine_ms"] / 1000, 3)
    laps["image moderation + encode + store (encode_store_ms)"] = round(timings["encode_store_ms"] / 1000, 3)
    laps["claim and the rest of the request"] = round(
        request_s - (timings["prepare_ms"] + timings["engine_ms"] + timings["encode_store_ms"]) / 1000, 3)
    mark[0] = time.perf_counter()
    Path(out.parent / "out.png").write_bytes(service.blobs.get(done.outcome["media"][0]["key"]))
    lap("write -o")
    out.write_text(json.dumps({"phases_s": laps, "sum_s": round(sum(laps.values()), 3),
                               "engine_ms": timings["engine_ms"]}))
    changes.close()
    os._exit(0)  # the figures are written; what the interpreter's exit costs is in the cold runs


# -- the report -------------------------------------------------------------------------------


def build_report(variants: dict[str, Variant], floors: dict[str, list[float]], runs: int, **meta: Any) -> dict:
    from bench._harness import summary

    floor = {name: summary(values) for name, values in floors.items()}
    out: dict[str, Any] = {
        "command": ["darkroom", "generate", PROMPT, "-o", "out.png"],
        "model": "darkroom-mini (defaults: 8 steps, guidance 2 with true CFG, 128x128 drawn, 1024x1024 out)",
        "runs_per_variant": runs, "target_wall_s": TARGET_S, **meta, "floors_s": floor, "variants": {},
    }
    for name, variant in variants.items():
        wall = [r["wall_s"] for r in variant.runs]
        engine = [r["engine_ms"] / 1000 for r in variant.runs]
        p50 = summary(wall)["p50"]
        out["variants"][name] = {
            "ref": variant.ref,
            "wall_s": summary(wall),
            "engine_s": summary(engine),
            "wall_over_engine_p50": round(p50 / summary(engine)["p50"], 2),
            # what the one-shot path adds around the engine, run by run (the engine's own time
            # swings most on a shared machine)
            "wall_minus_engine_s": summary([w - e for w, e in zip(wall, engine)]),
            "wall_over_import_floor_p50": round(p50 / floor["import_torch_kontext_pipeline"]["p50"], 2),
            "above_import_floor_p50_s": round(p50 - floor["import_torch_kontext_pipeline"]["p50"], 2),
            "warm_wall_s": summary([r["warm_wall_s"] for r in variant.runs]),
            "peak_rss_mib": summary([r["peak_rss_mib"] for r in variant.runs]),
            "queued_ms": summary([r["queued_ms"] for r in variant.runs]),
            "rest_ms": summary([r["rest_ms"] for r in variant.runs]),
            "runs": variant.runs,
            "phases": variant.phases,
        }
    return out


def table(report: dict[str, Any]) -> str:
    floors = report["floors_s"]
    lines = [f"cold `darkroom generate` (darkroom-mini defaults), {report['runs_per_variant']} runs each, p50:",
             f"  floors: python start {floors['python_start']['p50']:.2f} s, import torch+diffusers "
             f"{floors['import_torch_diffusers']['p50']:.2f} s, + FluxKontextPipeline "
             f"{floors['import_torch_kontext_pipeline']['p50']:.2f} s"]
    for name, v in report["variants"].items():
        lines.append(f"  {name:<14} wall {v['wall_s']['p50']:.2f} s  engine {v['engine_s']['p50']:.2f} s  "
                     f"wall/engine {v['wall_over_engine_p50']:.1f}x  wall - engine {v['wall_minus_engine_s']['p50']:.2f} s  "
                     f"wall - import floor "
                     f"{v['above_import_floor_p50_s']:.2f} s  warm {v['warm_wall_s']['p50']:.2f} s  "
                     f"peak RSS {v['peak_rss_mib']['p50']:.0f} MiB  (target <= {report['target_wall_s']:.0f} s)")
        for phase, seconds in v["phases"].get("phases_s", {}).items():
            lines.append(f"      {phase:<52} {seconds:6.2f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())

"""Plumbing for ``bench.queue``: statistics, /proc readers, the machine, darkroom and baseline
processes, load generators, figures and their table."""

from __future__ import annotations

import asyncio
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from darkroom.testing.server import Process, Server, create_key, darkroom_env, free_port

REPO = Path(__file__).resolve().parents[1]
API = "/api/v1/ie/requestqueue/apikey"
MODEL = "darkroom-mini"
PROMPT = "a red circle to the left of a blue square"


def log(message: str) -> None:
    """Progress, on stderr (stdout is the table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- statistics ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, p50, p99, mean, min and max, rounded to 0.01."""
    if not values:
        return {"n": 0}
    stats = {"p50": percentile(values, 50), "p99": percentile(values, 99), "mean": sum(values) / len(values),
             "min": min(values), "max": max(values)}
    return {"n": len(values), **{k: round(v, 2) for k, v in stats.items()}}


# -- /proc -------------------------------------------------------------------------------


def proc_status_kb(pid: int) -> dict[str, int]:
    """The ``Vm*`` lines of /proc/PID/status, in kB (VmHWM: peak resident set)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Vm") and line.endswith("kB"):
            name, value = line.split(":", 1)
            out[name] = int(value.split()[0])
    return out


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children of all its threads, recursively)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            kids = [int(p) for p in children.read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def maps_mention(pid: int, needle: str) -> list[str]:
    """The distinct files mapped into ``pid`` whose path contains ``needle``."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
             if needle in line and len(line.split()) >= 6}
    return sorted(paths)


def peak_rss(pid: int) -> dict[str, Any]:
    """VmHWM of ``pid`` and of its descendants (MiB), and whether any maps libtorch."""
    pids = [pid, *descendants(pid)]
    hwm = {p: proc_status_kb(p).get("VmHWM", 0) / 1024 for p in pids}
    return {"pid": pid, "vmhwm_mib": round(hwm[pid], 1), "with_children_mib": round(sum(hwm.values()), 1),
            "children": len(pids) - 1, "libtorch": maps_mention(pid, "libtorch")}


def torch_import_floor_mib() -> float:
    """VmHWM of a fresh interpreter that only imports torch: the least a worker can weigh."""
    code = ("import torch, pathlib; print([l for l in pathlib.Path('/proc/self/status').read_text()"
            ".splitlines() if l.startswith('VmHWM')][0].split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return round(int(out.stdout.strip()) / 1024, 1)


# -- the machine and the code ------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {"cores": os.cpu_count(), "cpu_model": model.group(1).strip() if model else platform.processor(),
            "mem_gib": round(int(mem.group(1)) / 2**20, 1) if mem else None, "python": platform.python_version(),
            "kernel": platform.release(), "wrk": wrk_version(), "loadavg_at_start": loadavg()}


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages: other work on a shared machine shows here."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()


def code_under_test(ref: str | None) -> dict[str, Any]:
    """What was measured: the commit, and whether src/ had uncommitted changes (working tree runs)."""
    import darkroom

    info: dict[str, Any] = {"head": git("rev-parse", "--short", "HEAD"),
                            "darkroom": str(Path(darkroom.__file__).parent)}
    if ref:
        info.update(ref=ref, commit=git("rev-parse", "--short", ref), src="git archive of the ref")
    else:
        info.update(commit=info["head"], src="working tree", src_dirty=bool(git("status", "--porcelain", "--", "src")))
    return info


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def models_file() -> Path:
    """The registry shipped next to the darkroom under test (a ``--ref`` export has its own)."""
    import darkroom

    beside = Path(darkroom.__file__).resolve().parents[2] / "models" / "models.toml"
    return beside if beside.exists() else REPO / "models" / "models.toml"


# -- processes ---------------------------------------------------------------------------


@dataclass
class Backend:
    """Where a deployment keeps its data: ``sqlite`` in its data dir, or a fresh PostgreSQL database."""

    name: str
    pg: Any = None  # darkroom.testing.postgres.PostgresCluster for postgresql

    def env(self, data_dir: Path) -> dict[str, str]:
        extra = {"DARKROOM_DATABASE_URL": self.pg.new_database()} if self.name == "postgresql" else {}
        return darkroom_env(data_dir, models_file(), **extra)


@dataclass
class Deployment:
    """``darkroom serve --no-worker`` plus, optionally, one ``darkroom worker``, on fresh data."""

    root: Path
    env: dict[str, str]
    key: str
    api: Server
    worker: Process | None = None

    @classmethod
    def start(cls, backend: Backend, root: Path, *, worker: bool) -> Deployment:
        root.mkdir(parents=True, exist_ok=True)
        env = backend.env(root / "data")
        key = create_key(env, "bench")
        api = Server(env, root / "serve.log", worker=False).start()
        dep = cls(root, env, key, api)
        if worker:
            dep.worker = Process(["worker"], env, root / "worker.log").start()
        return dep

    @property
    def url(self) -> str:
        return self.api.url

    @property
    def log_level(self) -> str:
        """The uvicorn log level ``darkroom serve`` runs with here (its setting, else the default)."""
        from darkroom.settings import Settings

        return (self.env.get("DARKROOM_LOG_LEVEL") or Settings.model_fields["log_level"].default).lower()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url + API, headers=self.headers, timeout=60)

    def stop_worker(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def stop(self) -> None:
        self.stop_worker()
        self.api.stop()

    def log_tails(self) -> str:
        procs = [p for p in (self.api, self.worker) if p is not None]
        return "\n".join(f"--- {p.log_path} ---\n{p.log_tail(30)}" for p in procs)


@dataclass
class BareServer:
    """``bench._bare`` (FastAPI ``{"hello": "world"}``) under the darkroom server's uvicorn settings."""

    log_level: str
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hello"

    def start(self, timeout: float = 30) -> BareServer:
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench._bare", "--port", str(self.port),
                                          "--log-level", self.log_level], cwd=REPO, stdout=out,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the bare app did not start; see {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def make_workdir(keep: bool) -> Path:
    path = Path(tempfile.mkdtemp(prefix="darkroom-bench-queue-"))
    log(f"work dir {path}" + (" (kept)" if keep else ""))
    return path


def remove_workdir(path: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(path, ignore_errors=True)


# -- load generators -------------------------------------------------------------------------


@dataclass
class Load:
    """One load run: requests per second and latency, as the load generator saw them."""

    tool: str
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    seconds: float
    connections: int


def wrk_version() -> str | None:
    if shutil.which("wrk") is None:
        return None
    out = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "wrk"


def _wrk_ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def run_wrk(url: str, *, headers: dict[str, str], seconds: float, connections: int, lua: str | None = None,
            workdir: Path) -> Load:
    """``wrk -t1 -cN -dS --latency`` (a Lua script for a POST body); non-2xx answers count as errors."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    if lua:
        script = workdir / f"wrk-{os.getpid()}-{time.monotonic_ns()}.lua"
        script.write_text(lua)
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not (pct.get("50") and total and rps):
        raise RuntimeError(f"could not read wrk's output:\n{out}")
    # wrk leaves out percentile lines it has no samples for (a short, slow run): the highest it has.
    pct.setdefault("99", max((v for k, v in pct.items()), key=_wrk_ms))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (sum(map(int, socket.groups())) if socket else 0)
    return Load("wrk", float(rps.group(1)), int(total.group(1)), errors, _wrk_ms(pct["50"]), _wrk_ms(pct["99"]),
                seconds, connections)


async def _python_load(method: str, url: str, headers: dict[str, str], body: Any, seconds: float,
                       connections: int) -> Load:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + seconds

        async def one_connection() -> None:
            nonlocal errors
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.request(method, url, json=body)
                latencies.append((time.perf_counter() - started) * 1000)
                errors += not response.is_success

        started = time.perf_counter()
        await asyncio.gather(*(one_connection() for _ in range(connections)))
        elapsed = time.perf_counter() - started
    return Load("python-httpx", len(latencies) / elapsed, len(latencies), errors, percentile(latencies, 50),
                percentile(latencies, 99), seconds, connections)


def load(method: str, url: str, *, headers: dict[str, str], body: Any = None, seconds: float, connections: int,
         workdir: Path) -> Load:
    """Closed-loop load at ``connections`` connections: wrk if installed, else an asyncio httpx loop
    (which shares the CPUs with the server far more greedily than wrk does)."""
    if shutil.which("wrk"):
        lua = None
        if method != "GET":
            import json

            lua = (f"wrk.method = {json.dumps(method)}\nwrk.body = {json.dumps(json.dumps(body))}\n"
                   'wrk.headers["Content-Type"] = "application/json"\n')
        return run_wrk(url, headers=headers, seconds=seconds, connections=connections, lua=lua, workdir=workdir)
    return asyncio.run(_python_load(method, url, headers, body, seconds, connections))


# -- figures ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A target: ``on`` (``value`` or ``ratio``) ``op`` (``<=``, ``>=``, ``==``) ``bound``."""

    on: str
    op: str
    bound: float | bool
    text: str

    def met(self, value: Any, ratio: float | None) -> bool | None:
        subject = value if self.on == "value" else ratio
        if subject is None or (isinstance(subject, float) and math.isnan(subject)):
            return None
        if self.op == "<=":
            return bool(subject <= self.bound)
        if self.op == ">=":
            return bool(subject >= self.bound)
        return bool(subject == self.bound)


@dataclass
class Figure:
    """One row of the table: a value, the baseline it is measured against in the same run, their ratio."""

    group: str
    name: str
    value: float | bool | None
    unit: str
    baseline: float | None = None
    baseline_name: str = ""
    target: Target | None = None
    note: str = ""
    ratio: float | None = field(init=False)
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        numeric = isinstance(self.value, (int, float)) and not isinstance(self.value, bool)
        self.ratio = (round(self.value / self.baseline, 3)  # type: ignore[operator]
                      if numeric and self.baseline not in (None, 0) and not math.isnan(self.value) else None)
        self.met = self.target.met(self.value, self.ratio) if self.target else None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["target"] = self.target.text if self.target else None
        return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip()


def table(rows: list[tuple[str, Figure]]) -> str:
    """The figures as a plain-text table (one row per backend and figure)."""
    head = ("backend", "figure", "value", "baseline", "ratio", "target", "met?")
    body = [(backend, f.name, _fmt(f.value, f.unit),
             f"{_fmt(f.baseline, f.unit)} ({f.baseline_name})" if f.baseline_name else "-",
             _fmt(f.ratio) if f.ratio is None else f"{f.ratio:.2f}x", f.target.text if f.target else "-",
             {True: "MET", False: "missed", None: "-"}[f.met]) for backend, f in rows]
    widths = [max(len(str(r[i])) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""A throwaway S3 server for tests and CI: a one-node Ceph cluster (ceph-mon + one memstore
ceph-osd) and radosgw on loopback, in a temp dir, with ``auth none``. Stopped and deleted on exit.

Needs the Debian packages ``radosgw ceph-mon ceph-osd`` (binaries from PATH, or from
DARKROOM_TEST_CEPH_BIN). Nothing is mocked: this is the real S3 implementation Ceph ships.
Tests get it as the session fixture ``s3_server`` (tests/conftest.py); by hand::

    python -m darkroom.testing.radosgw start DIR   # prints the endpoint and keys, runs until stopped
    python -m darkroom.testing.radosgw stop DIR

The recipe, and the traps it steps around:

* the monmap lists both the v2 and the v1 address of the monitor, and with auth none every
  messenger mode is ``crc`` (the default ``secure`` needs cephx);
* every daemon runs in the foreground (``-f``) with stdin, stdout and stderr redirected: a
  daemon that inherits a terminal or a pipe can hang;
* the OSD keeps its objects in memory (``osd objectstore = memstore``), one replica per pool,
  few placement groups per pool (radosgw makes several pools);
* radosgw with auth none still checks S3 signatures, so an S3 user is created with
  ``radosgw-admin user create`` and fixed keys. Buckets are addressed path-style (no
  ``rgw_dns_name``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ACCESS_KEY = "DARKROOMTESTACCESSKEY"
SECRET_KEY = "darkroom-test-secret-key-0123456789abcdef"
REGION = "us-east-1"  # radosgw's default zonegroup answers to any region name in SigV4
START_TIMEOUT_S = 120.0

# Binaries the cluster needs, with the Debian package each comes from.
BINARIES = {
    "monmaptool": "ceph-base",
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "ceph": "ceph-common",
    "radosgw": "radosgw",
    "radosgw-admin": "radosgw",
}


def ceph_bin(name: str) -> str:
    explicit = os.environ.get("DARKROOM_TEST_CEPH_BIN")
    if explicit:
        found = str(Path(explicit) / name) if (Path(explicit) / name).exists() else None
    else:
        found = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if found is None:
        raise RuntimeError(
            f"{name} not found on PATH (Debian: apt-get install -y radosgw ceph-mon ceph-osd; "
            f"or set DARKROOM_TEST_CEPH_BIN)"
        )
    return found


def missing_binaries() -> list[str]:
    """The binaries the cluster needs that are not installed (empty: all there)."""
    missing = []
    for name in BINARIES:
        try:
            ceph_bin(name)
        except RuntimeError:
            missing.append(name)
    return missing


def _die_with_parent_hook():
    """A preexec_fn that has the child SIGKILLed when its parent dies (Linux; None elsewhere), so
    that a test run killed outright leaves no Ceph daemons behind. prctl is looked up here, in
    the parent: the child, between fork and exec, only makes the one libc call."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigkill = 1, int(signal.SIGKILL)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigkill)

    return hook


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _config(root: Path, fsid: str, mon_v2: int, mon_v1: int, rgw_port: int) -> str:
    return f"""\
[global]
fsid = {fsid}
mon initial members = a
mon host = [v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
auth cluster required = none
auth service required = none
auth client required = none
auth supported = none
ms_mon_client_mode = crc
ms_mon_cluster_mode = crc
ms_mon_service_mode = crc
ms_client_mode = crc
ms_cluster_mode = crc
ms_service_mode = crc
run dir = {root}/run
admin socket = {root}/run/$name.asok
pid file = {root}/run/$name.pid
log file = {root}/log/$name.log
log to stderr = false
err to stderr = false
mon cluster log file = {root}/log/cluster.log
crash dir = {root}/crash
keyring = {root}/keyring
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon osd down out interval = 0
mon data avail warn = 1
mon data avail crit = 0
# Each osdmap change (radosgw makes pools one by one) waits out the propose interval: 1 s by default.
paxos propose interval = 0.05
paxos min wait = 0.01

[mon]
mon data = {root}/mon.$id

[osd]
osd data = {root}/osd.$id
osd objectstore = memstore
memstore device bytes = {1 << 30}
osd crush update on start = true
osd max object name len = 460
osd max object namespace len = 64
osd op num shards = 1
osd op num threads per shard = 2

[client.rgw.gw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
rgw thread pool size = 32
rgw enable usage log = false
rgw gc obj min wait = 10
"""


@dataclass
class RadosGateway:
    """A running one-node Ceph cluster with radosgw; S3 at ``endpoint_url`` with the given keys."""

    root: Path
    endpoint_url: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    started_in_s: float = 0.0
    mon_ports: tuple[int, int] = (0, 0)  # (v2, v1)
    fsid: str = ""
    detached: bool = False  # False: the daemons are killed when the process that started them dies
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    def env(self) -> dict[str, str]:
        """Environment variables that point a boto3/AWS client at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):
        """A boto3 S3 client for this server (path-style)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"},
                          retries={"mode": "standard", "max_attempts": 3}),
        )  # fmt: skip

    # -- running the cluster ----------------------------------------------------------------

    def _spawn(self, name: str, *args: str) -> None:
        hook = None if self.detached else _die_with_parent_hook()
        with open(self.root / "log" / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(
                [*args, "-c", str(self.conf)], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                cwd=self.root, start_new_session=True, preexec_fn=hook,  # noqa: PLW1509 - one prctl call
            )  # fmt: skip

    def _run(self, *args: str, timeout: float = 60) -> str:
        proc = subprocess.run(
            [*args, "-c", str(self.conf)], stdin=subprocess.DEVNULL, capture_output=True, text=True,
            cwd=self.root, timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def _check_alive(self) -> None:
        for name, proc in self._procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode} while starting:\n{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 40) -> str:
        lines: list[str] = []
        for path in (self.root / "log" / f"{name}.out", *sorted((self.root / "log").glob(f"*{name}*.log"))):
            try:
                lines += [f"--- {path.name}", *path.read_text(errors="replace").splitlines()[-n:]]
            except FileNotFoundError:
                pass
        return "\n".join(lines)

    def _wait(self, what: str, predicate, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            try:
                if predicate():
                    return
            except (RuntimeError, subprocess.TimeoutExpired, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def _osd_up(self) -> bool:
        dump = json.loads(self._run(ceph_bin("ceph"), "--connect-timeout", "10", "osd", "dump", "-f", "json",
                                    timeout=20))
        return any(o["osd"] == 0 and o["up"] == 1 for o in dump.get("osds", []))

    def _http_up(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(self.endpoint_url + "/", timeout=2) as resp:
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (urllib.error.URLError, OSError):
            return False

    def start(self, timeout: float = START_TIMEOUT_S) -> RadosGateway:
        started = time.monotonic()
        deadline = started + timeout
        fsid = self.fsid
        for sub in ("run", "log", "crash", "rgw", "mon.a", "osd.0"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        mon_v2, mon_v1 = self.mon_ports
        monmap = self.root / "monmap"
        self._run(ceph_bin("monmaptool"), "--create", "--clobber", "--fsid", fsid,
                  "--addv", "a", f"[v2:127.0.0.1:{mon_v2},v1:127.0.0.1:{mon_v1}]", str(monmap))
        # An empty keyring of our own (auth none checks nothing), so no tool reads /etc/ceph's.
        (self.root / "keyring").write_text("")
        self._run(ceph_bin("ceph-mon"), "--mkfs", "-i", "a", "--monmap", str(monmap))
        self._spawn("mon.a", ceph_bin("ceph-mon"), "-f", "-i", "a")

        osd_uuid = str(uuid.uuid4())
        self._wait("ceph-mon", lambda: self._run(ceph_bin("ceph"), "--connect-timeout", "5", "mon", "stat",
                                                 timeout=10) is not None, deadline - time.monotonic())
        osd_id = self._run(ceph_bin("ceph"), "osd", "new", osd_uuid).strip()
        if osd_id != "0":
            raise RuntimeError(f"expected osd id 0, got {osd_id!r}")
        self._run(ceph_bin("ceph-osd"), "--mkfs", "-i", "0", "--osd-uuid", osd_uuid)
        self._spawn("osd.0", ceph_bin("ceph-osd"), "-f", "-i", "0")
        self._wait("ceph-osd to come up", self._osd_up, deadline - time.monotonic())

        self._spawn("client.rgw.gw", ceph_bin("radosgw"), "-f", "-n", "client.rgw.gw")
        self._wait(f"radosgw to answer on {self.endpoint_url}", self._http_up, deadline - time.monotonic())
        self._run(ceph_bin("radosgw-admin"), "-n", "client.admin", "user", "create", "--uid=test",
                  "--display-name=darkroom tests", f"--access-key={self.access_key}",
                  f"--secret={self.secret_key}")
        self.started_in_s = time.monotonic() - started
        (self.root / "endpoint.json").write_text(json.dumps({
            "endpoint_url": self.endpoint_url, "access_key": self.access_key, "secret_key": self.secret_key,
            "region": self.region, "pids": {n: p.pid for n, p in self._procs.items()},
        }))  # fmt: skip
        return self

    def stop_gateway(self) -> None:
        """Stop radosgw alone (the S3 endpoint goes away; the cluster and its objects stay), as
        an outage of the storage service would."""
        proc = self._procs.pop("client.rgw.gw", None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def start_gateway(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start radosgw again after ``stop_gateway``; returns once it answers."""
        self._spawn("client.rgw.gw", ceph_bin("radosgw"), "-f", "-n", "client.rgw.gw")
        self._wait(f"radosgw to answer on {self.endpoint_url}", self._http_up, timeout)

    def stop(self) -> None:
        """Stop radosgw, then the OSD, then the monitor (SIGTERM, SIGKILL after a few seconds)."""
        for name in ("client.rgw.gw", "osd.0", "mon.a"):
            proc = self._procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._procs.clear()


def start_radosgw(root: Path, timeout: float = START_TIMEOUT_S, *, detached: bool = False) -> RadosGateway:
    """Start a cluster and radosgw under ``root`` (an empty or new folder). Raises RuntimeError.

    ``detached``: the daemons outlive this process (``stop DIR`` ends them); by default
    they die with it."""
    missing = missing_binaries()
    if missing:
        raise RuntimeError(
            f"Ceph binaries missing: {', '.join(missing)} "
            f"(Debian: apt-get install -y radosgw ceph-mon ceph-osd)"
        )
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    mon_v2, mon_v1, rgw_port = _free_ports(3)
    fsid = str(uuid.uuid4())
    (root / "ceph.conf").write_text(_config(root, fsid, mon_v2, mon_v1, rgw_port))
    gw = RadosGateway(root=root, endpoint_url=f"http://127.0.0.1:{rgw_port}", mon_ports=(mon_v2, mon_v1),
                     fsid=fsid, detached=detached)
    try:
        gw.start(timeout)
    except Exception as exc:
        tails = "\n".join(gw.log_tail(n, 15) for n in ("mon.a", "osd.0", "client.rgw.gw"))
        gw.stop()
        raise RuntimeError(f"could not start radosgw: {exc}\n{tails}") from exc
    except BaseException:  # KeyboardInterrupt while starting: still leave no daemons behind
        gw.stop()
        raise
    return gw


@contextmanager
def running_radosgw(root: Path | None = None, timeout: float = START_TIMEOUT_S) -> Iterator[RadosGateway]:
    """A started radosgw, stopped on exit; its folder (a new temp dir unless given) is deleted."""
    own = root is None
    path = Path(tempfile.mkdtemp(prefix="darkroom-rgw-")) if root is None else Path(root)
    try:
        gw = start_radosgw(path, timeout)
        try:
            yield gw
        finally:
            gw.stop()
    finally:
        shutil.rmtree(path, ignore_errors=True) if own else _clean(path)


def _clean(root: Path) -> None:
    """Remove what start_radosgw made under a caller's folder (not the folder itself)."""
    for sub in ("run", "log", "crash", "rgw", "mon.a", "osd.0"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for name in ("ceph.conf", "monmap", "keyring", "endpoint.json"):
        (root / name).unlink(missing_ok=True)


# -- command line: scripts/radosgw.sh ---------------------------------------------------------


def _cli_start(root: Path) -> int:
    """Start in the background (daemons detached from this process) and print the endpoint."""
    if (root / "endpoint.json").exists():
        print(f"{root} already holds a radosgw (stop it first)", file=sys.stderr)
        return 1
    gw = start_radosgw(root, detached=True)
    gw._procs.clear()  # leave them running: `stop DIR` ends them by the pids in endpoint.json
    print(f"radosgw started in {gw.started_in_s:.1f}s")
    print(f"endpoint_url={gw.endpoint_url}")
    print(f"access_key={gw.access_key}")
    print(f"secret_key={gw.secret_key}")
    print(f"region={gw.region}")
    return 0


def _cli_stop(root: Path) -> int:
    info_path = root / "endpoint.json"
    if not info_path.exists():
        print(f"no radosgw in {root}", file=sys.stderr)
        return 1
    pids = json.loads(info_path.read_text()).get("pids", {})
    for name in ("client.rgw.gw", "osd.0", "mon.a"):
        pid = pids.get(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    _clean(root)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("start", "stop"):
        print("usage: python -m darkroom.testing.radosgw start|stop DIR", file=sys.stderr)
        return 2
    root = Path(args[1]).resolve()
    return _cli_start(root) if args[0] == "start" else _cli_stop(root)


if __name__ == "__main__":
    sys.exit(main())

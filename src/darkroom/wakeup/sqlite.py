"""Wake-ups between the processes that share one SQLite file: Unix datagram sockets.

SQLite has no server to carry a signal, and its scope is one machine anyway, so the
processes rendezvous in a directory next to the database, ``<db file>.wakeup/`` (mode
0700). Each listener binds a non-blocking ``AF_UNIX``/``SOCK_DGRAM`` socket there, named
``<pid>-<random>.<channel codes>.sock``; the codes are 16-bit hashes of the channels it
listens to (``all`` past two channels). A notify lists the directory (one ``os.scandir``)
and sends a datagram ``channel NUL payload`` with ``MSG_DONTWAIT`` to every socket whose
name carries the channel's code. A worker waiting for work is not woken by progress
steps, and a busy worker's buffer does not fill with them. The listener still filters
by channel on receipt (a hash collision only costs a datagram).

Why this is safe:

* Nothing is shared but the directory: no lock, no file writes, nothing on the database,
  so a notify cannot stall a writer or be stalled by one, and a crash leaves no state to
  repair.
* A dead listener (a crashed process's socket file) answers ``ECONNREFUSED`` (or
  ``ENOENT`` if it vanished meanwhile); the notify that finds it unlinks the file, so
  leftovers are cleaned by the next notify.
* A full receive queue (``EAGAIN``/``ENOBUFS``: Linux holds ``net.unix.max_dgram_qlen``
  datagrams per socket, 10 by default) means the listener has unread wake-ups already,
  so it will wake anyway; the datagram is skipped rather than waited for, and a notify
  never blocks. Only its payload is lost, so a listener that drains a full queue's worth
  of datagrams at once reports a wildcard (``Signal(channel, "")``) per channel: "anything
  may have changed", and its caller re-reads everything.
* Each notify sends from a fresh unbound socket. Linux charges an unread datagram to
  the sender's socket buffer until it is received, so a long-lived shared sender would
  let a few stuck listeners (a worker busy for minutes) exhaust its buffer and silence
  every other listener; a fresh socket's buffer holds one notify's datagrams (Linux's
  default buffer takes about 270, so up to 270 listeners per channel).
* A lost datagram costs one safety-net poll interval: wake-ups are hints, and every
  listener re-reads the store after waking or timing out.

What it costs: a notify is one ``scandir`` plus one ``sendto`` per live listener of that
channel, a few microseconds each, plus a ``socket``/``close`` pair. Measured on a 2-vCPU
Linux VM (Python 3.11, ext4), one notify to 4 listener processes blocked in ``wait``
took 110-125 µs (median; p90 under 200 µs), most of it the kernel waking those
processes; back to back with warm caches and no one waiting, 27 µs; with no listener,
7 µs (a notify spaced out from the last one pays cold caches: about 30 µs even then).
A SQLite commit with ``synchronous=FULL`` costs an fsync, milliseconds. A listener
costs one socket file and one descriptor; waiting is a ``poll``.

The directory: AF_UNIX paths are limited to about 104 bytes (108 on Linux, 104 on macOS
and the BSDs), so if ``<db file>.wakeup/<socket name>`` could exceed 103 bytes (the
directory's path longer than 74) the directory is ``darkroom-<hash>`` under
:func:`tempfile.gettempdir`, the hash being that of the database file's resolved path.
The choice depends on the path alone, so every process on the machine makes the same
one, provided they agree on the temp directory (``TMPDIR``). The first listener makes
the directory and the last one to close removes it (a listener binding meanwhile makes
it again), so neither place keeps litter. The directory must belong to the current user
with no group or other access; processes of different users cannot wake each other
(their listeners fall back to polling, with a warning).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import secrets
import select
import socket
import stat
import tempfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from darkroom.wakeup.interface import Signal, anything

log = logging.getLogger(__name__)

SOCKET_PATH_MAX = 103
"""Bytes of a socket path: ``sun_path`` holds 108 on Linux and 104 on macOS, NUL included."""

MAX_DATAGRAM = 1024
"""Bytes of ``channel NUL payload``; a larger notify is dropped with a warning."""

_SUFFIX = ".sock"
_ALL = "all"  # the channel tag of a listener on more than _MAX_CODED channels
_NONE = "none"  # the channel tag of a listener on no channel: no code matches it
_MAX_CODED = 2
# "<pid, 6 hex>-<6 hex>.<code>-<code>.sock": pids stay below 2**22 on Linux.
_NAME_MAX = 6 + 1 + 6 + 1 + (5 * _MAX_CODED - 1) + len(_SUFFIX)
_DIR_MAX = SOCKET_PATH_MAX - 1 - _NAME_MAX
_DRAIN_MAX = 4096  # datagrams read per drain, so a flood cannot hold wait() forever
_DEFAULT_QLEN = 10  # Linux's default net.unix.max_dgram_qlen


def rendezvous_dir(database: str | os.PathLike[str]) -> Path:
    """The directory where the listeners of this database file bind their sockets.

    ``<db file>.wakeup`` beside the file, or ``<tempdir>/darkroom-<hash>`` when that
    path is too long for a socket path (see the module docstring).
    """
    path = Path(database).resolve()
    beside = path.with_name(path.name + ".wakeup")
    if len(os.fsencode(beside)) <= _DIR_MAX:
        return beside
    digest = hashlib.sha256(os.fsencode(path)).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"darkroom-{digest}"


def _code(channel: str) -> str:
    return format(zlib.crc32(channel.encode()) & 0xFFFF, "04x")


def _tag(channels: frozenset[str]) -> str:
    if not channels:
        return _NONE
    if len(channels) > _MAX_CODED:
        return _ALL
    return "-".join(sorted({_code(c) for c in channels}))


@functools.cache
def _overflow_threshold() -> int:
    """How many datagrams in one drain mean the queue may have overflowed.

    Linux refuses a datagram when the queue holds more than ``max_dgram_qlen``, so a
    queue that overflowed held ``max_dgram_qlen + 1``, all read by the next drain. (Other
    systems limit bytes, not datagrams: there it is a heuristic.)
    """
    try:
        qlen = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        qlen = _DEFAULT_QLEN
    return max(1, qlen + 1)


def _ensure_private_dir(directory: Path) -> None:
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(directory))
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionError(errno.EPERM, "not a private directory of this user", str(directory))


class SqliteListener:
    """A bound datagram socket in the rendezvous directory (see the module docstring).

    If the socket cannot be bound (directory not writable, path too long, another
    user's directory) the listener logs a warning and stays deaf: ``wait`` then just
    sleeps out its timeout, and the caller's safety-net poll does the work.
    """

    def __init__(self, directory: Path, channels: frozenset[str]) -> None:
        self.channels = channels
        self.directory = directory
        self.path: str | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        try:
            self.path = self._bind(directory)
        except OSError as exc:
            log.warning("wake-ups off for this listener, polling only: cannot bind in %s: %s", directory, exc)
        self._poll = select.poll()
        self._poll.register(self._sock, select.POLLIN)
        self._closed = False

    def _bind(self, directory: Path) -> str:
        tag = _tag(self.channels)
        for attempt in range(1, 4):
            path = os.path.join(directory, f"{os.getpid():x}-{secrets.token_hex(3)}.{tag}{_SUFFIX}")
            try:
                _ensure_private_dir(directory)
                self._sock.bind(path)
                return path
            except FileNotFoundError:  # the last listener removed the empty directory meanwhile
                if attempt == 3:
                    raise
            except OSError as exc:  # EADDRINUSE: a leftover of an earlier process with our pid and token
                if exc.errno != errno.EADDRINUSE or attempt == 3:
                    raise
        raise AssertionError("unreachable")

    def wait(self, timeout: float) -> list[Signal]:
        if self._closed:
            raise ValueError("wait on a closed listener")
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            signals = self._drain()
            if signals:
                return signals
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            events = self._poll.poll(remaining * 1000)
            if any(mask & ~select.POLLIN for _, mask in events):  # error or hang-up: never spin on it
                log.warning("wake-up socket %s reports poll events %s; sleeping out the wait", self.path, events)
                time.sleep(max(0.0, deadline - time.monotonic()))
                return self._drain()

    def _drain(self) -> list[Signal]:
        signals: dict[Signal, None] = {}
        count = 0
        while count < _DRAIN_MAX:
            try:
                data = self._sock.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                log.warning("wake-up socket %s: recv failed: %s", self.path, exc)
                break
            count += 1
            channel, _, payload = data.partition(b"\0")
            signal = Signal(channel.decode(errors="replace"), payload.decode(errors="replace"))
            if signal.channel in self.channels:
                signals[signal] = None
        if count >= _overflow_threshold():  # some datagrams may have been skipped: say "anything"
            signals.update(dict.fromkeys(anything(sorted(self.channels))))
        return list(signals)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.path is not None:  # unlink first: a notify meanwhile sees ENOENT, not a stale socket
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("could not remove wake-up socket %s: %s", self.path, exc)
            try:  # the last listener out removes the directory (rmdir refuses a non-empty one)
                os.rmdir(self.directory)
            except OSError:
                pass
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SqliteWakeup:
    """Wake-ups for the processes sharing one SQLite database file (see the module docstring)."""

    def __init__(self, database: str | os.PathLike[str]) -> None:
        self.directory = rendezvous_dir(database)
        self._closed = False

    def notify(self, channel: str, payload: str = "") -> None:
        if self._closed:
            return
        try:
            self._notify(channel, payload)
        except Exception as exc:  # noqa: BLE001 - a lost wake-up costs one poll interval; never fail the caller
            log.warning("wake-up notify %s %.80r failed: %s", channel, payload, exc)

    def _notify(self, channel: str, payload: str) -> None:
        data = channel.encode() + b"\0" + payload.encode()
        if len(data) > MAX_DATAGRAM:
            log.warning("wake-up %s dropped: payload of %d bytes exceeds %d", channel, len(data), MAX_DATAGRAM)
            return
        code = _code(channel)
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:  # made by the first listener, removed by the last: nobody to wake
            return
        sock: socket.socket | None = None
        try:
            with entries:
                for entry in entries:
                    name = entry.name
                    if not name.endswith(_SUFFIX):
                        continue
                    tag = name[name.find(".") + 1 : -len(_SUFFIX)]
                    if tag != _ALL and code not in tag:  # fixed-width codes: a substring match is exact
                        continue
                    if sock is None:  # blocking mode, but every send is MSG_DONTWAIT
                        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._send(sock, data, entry.path)
        finally:
            if sock is not None:
                sock.close()

    @staticmethod
    def _send(sock: socket.socket, data: bytes, path: str) -> None:
        try:
            sock.sendto(data, socket.MSG_DONTWAIT, path)
        except (ConnectionRefusedError, FileNotFoundError):  # its listener died (or just closed)
            try:
                os.unlink(path)
                log.debug("removed the stale wake-up socket %s", path)
            except FileNotFoundError:
                pass
        except BlockingIOError:  # its queue is full: it has unread wake-ups and will wake anyway
            pass
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # ENOBUFS: full, as above (macOS)
                log.debug("wake-up to %s failed: %s", path, exc)

    def listen(self, channels: Iterable[str]) -> SqliteListener:
        return SqliteListener(self.directory, frozenset(channels))

    def close(self) -> None:
        self._closed = True

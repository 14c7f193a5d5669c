"""Wake-ups through PostgreSQL: LISTEN/NOTIFY (psycopg 3.2 or later).

Every process sharing the database shares its notifications, across machines, with no
other service. Channels are prefixed (``queue`` -> ``darkroom_queue``) so darkroom's
notifications stay apart from anything else using the database; NOTIFY is scoped to
one database already.

``notify`` runs ``SELECT pg_notify(channel, payload)`` on one autocommit connection per
``PostgresWakeup``, shared by the process's threads under a lock: one round trip,
delivered at once because autocommit commits it, after the change it announces has
committed. (A caller that wants the notification tied to its transaction can run
``pg_notify`` on its own connection instead: PostgreSQL delivers it at commit.) A broken
connection is reopened once per notify; while the server is unreachable, connecting is
retried at most every few seconds (doubling up to ``MAX_BACKOFF_S``) and notifies in
between are dropped, so a notify never waits long and never raises.

Each listener has its own autocommit connection that LISTENs on its channels and waits
in ``Connection.notifies(timeout=...)``. When that connection breaks (a restart, a
failover, ``pg_terminate_backend``) the listener logs it, reconnects and reports a
wildcard signal per channel (``Signal(channel, "")``: anything may have changed while it
was away); while it cannot reconnect, ``wait`` sleeps out its timeout and returns
nothing, so a caller's loop cannot spin. TCP keepalives (unless the URL sets its own)
make a silently dropped connection fail within about a minute instead of never.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self

import sqlalchemy as sa

from darkroom.wakeup.interface import Signal, anything

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "darkroom_"
CONNECT_TIMEOUT_S = 5
MIN_BACKOFF_S = 0.5
MAX_BACKOFF_S = 10.0
NOTIFY_LOCK_WAIT_S = 1.0
"""How long a notify waits for the shared connection before dropping its wake-up."""

# Connection parameters applied unless the URL sets them.
_DEFAULT_PARAMS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_S,
    "application_name": "darkroom-wakeup",
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
}


def _psycopg() -> Any:
    """psycopg, imported on first use: it is an optional dependency (``darkroom[postgres]``)."""
    import psycopg

    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])
    if (major, minor) < (3, 2):
        raise ImportError(f"darkroom's PostgreSQL wake-ups need psycopg >= 3.2, found {psycopg.__version__}")
    return psycopg


def connection_params(url: str) -> dict[str, Any]:
    """libpq connection parameters for a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    psycopg = _psycopg()
    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(conninfo)
    for key, value in _DEFAULT_PARAMS.items():
        params.setdefault(key, value)
    return params


class _Backoff:
    """When the next connection attempt may run: doubling delays after failures."""

    def __init__(self) -> None:
        self.retry_at = 0.0
        self._delay = MIN_BACKOFF_S

    def failed(self) -> None:
        self.retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, MAX_BACKOFF_S)

    def connected(self) -> None:
        self.retry_at = 0.0

    def reset(self) -> None:
        self.retry_at = 0.0
        self._delay = MIN_BACKOFF_S


def _close_quietly(conn: psycopg.Connection[Any] | None) -> None:
    if conn is not None:
        try:
            conn.close()
        except Exception as exc:  # noqa: BLE001 - already broken; nothing to save
            log.debug("closing a wake-up connection: %s", exc)


class PostgresListener:
    """A LISTEN connection of its own (see the module docstring)."""

    def __init__(self, params: dict[str, Any], channels: frozenset[str]) -> None:
        self.channels = channels
        self._psycopg = _psycopg()
        self._params = params
        self._by_pg_channel = {CHANNEL_PREFIX + channel: channel for channel in channels}
        self._conn: psycopg.Connection[Any] | None = None
        self._connected_at = 0.0
        self._backoff = _Backoff()
        self._closed = False
        if not self._connect():
            log.warning("wake-ups off for this listener until PostgreSQL is reachable; polling only")

    def _connect(self) -> bool:
        psycopg = self._psycopg
        conn = None
        try:
            conn = psycopg.connect(**self._params, autocommit=True)
            for pg_channel in self._by_pg_channel:
                conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(pg_channel)))
        except (psycopg.Error, OSError) as exc:
            _close_quietly(conn)
            self._backoff.failed()
            log.warning("wake-up listener cannot connect to PostgreSQL: %s", exc)
            return False
        self._conn = conn
        self._connected_at = time.monotonic()
        self._backoff.connected()
        return True

    def wait(self, timeout: float) -> list[Signal]:
        if self._closed:
            raise ValueError("wait on a closed listener")
        timeout = max(timeout, 0.0)
        deadline = time.monotonic() + timeout
        conn = self._conn
        if conn is None:
            return self._reconnect(deadline)
        signals: dict[Signal, None] = {}
        try:
            for notify in conn.notifies(timeout=timeout, stop_after=1):
                self._add(signals, notify)
            if signals:  # drain what else has arrived, without waiting
                for notify in conn.notifies(timeout=0):
                    self._add(signals, notify)
        except (self._psycopg.Error, OSError) as exc:
            log.warning("wake-up listener lost its PostgreSQL connection (%s); reconnecting", exc)
            self._conn = None
            _close_quietly(conn)
            if time.monotonic() - self._connected_at > MAX_BACKOFF_S:
                self._backoff.reset()  # it was healthy: reconnect at once
            else:
                self._backoff.failed()  # it keeps breaking: back off, so the caller cannot spin
            return list(dict.fromkeys([*signals, *self._reconnect(deadline)]))
        return list(signals)

    def _add(self, signals: dict[Signal, None], notify: Any) -> None:
        channel = self._by_pg_channel.get(notify.channel)
        if channel is not None:
            signals[Signal(channel, notify.payload)] = None

    def _reconnect(self, deadline: float) -> list[Signal]:
        """Reconnect if the back-off allows it before ``deadline``; else sleep to the deadline.

        Returns the wildcards on success: signals may have been lost while disconnected.
        """
        now = time.monotonic()
        if self._backoff.retry_at > now:
            if self._backoff.retry_at > deadline:
                time.sleep(max(0.0, deadline - now))
                return []
            time.sleep(self._backoff.retry_at - now)
        if self._connect():
            log.info("wake-up listener reconnected to PostgreSQL")
            return anything(sorted(self.channels))
        time.sleep(max(0.0, deadline - time.monotonic()))
        return []

    def fileno(self) -> int:
        if self._conn is None:
            raise io.UnsupportedOperation("the listener is not connected")
        return self._conn.fileno()

    def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        _close_quietly(conn)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PostgresWakeup:
    """LISTEN/NOTIFY wake-ups for one PostgreSQL database (see the module docstring).

    Connects on the first notify, not here: constructing one never touches the server.
    """

    def __init__(self, url: str) -> None:
        self._psycopg = _psycopg()
        self.params = connection_params(url)
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._backoff = _Backoff()
        self._closed = False

    def notify(self, channel: str, payload: str = "") -> None:
        if self._closed:
            return
        try:
            if not self._lock.acquire(timeout=NOTIFY_LOCK_WAIT_S):
                log.debug("wake-up %s %.80r dropped: the notify connection is busy", channel, payload)
                return
            try:
                self._notify(CHANNEL_PREFIX + channel, payload)
            finally:
                self._lock.release()
        except Exception as exc:  # noqa: BLE001 - a lost wake-up costs one poll interval; never fail the caller
            log.warning("wake-up notify %s %.80r failed: %s", channel, payload, exc)

    def _notify(self, pg_channel: str, payload: str) -> None:
        psycopg = self._psycopg
        for attempt in (1, 2):  # the second: once more on a fresh connection
            conn = self._connection()
            if conn is None:
                return
            try:
                conn.execute("SELECT pg_notify(%s, %s)", (pg_channel, payload))
                return
            except psycopg.Error as exc:
                if not (conn.broken or conn.closed):  # the server refused it (e.g. a payload too long)
                    log.warning("wake-up %s %.80r refused: %s", pg_channel, payload, exc)
                    return
                self._conn = None
                _close_quietly(conn)
                if attempt == 2:
                    log.warning("wake-up %s %.80r lost: %s", pg_channel, payload, exc)

    def _connection(self) -> psycopg.Connection[Any] | None:
        """The shared connection, opened if needed; None while backing off or unreachable."""
        if self._conn is not None:
            return self._conn
        if time.monotonic() < self._backoff.retry_at:
            return None
        try:
            self._conn = self._psycopg.connect(**self.params, autocommit=True)
        except (self._psycopg.Error, OSError) as exc:
            self._backoff.failed()
            log.warning("wake-ups cannot connect to PostgreSQL, dropping them for now: %s", exc)
            return None
        self._backoff.reset()
        return self._conn

    def listen(self, channels: Iterable[str]) -> PostgresListener:
        return PostgresListener(self.params, frozenset(channels))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conn, self._conn = self._conn, None
        _close_quietly(conn)

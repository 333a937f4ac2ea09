"""The asyncpg pool as the client uses it: measured acquisition, background release, honest failure phases.

* An error while acquiring a connection (connecting, pool closed) provably happened before the request was sent,
  so it is wrapped in :class:`~trading_shared.resilience.RequestNotSent`.
* Waiting for a busy pool is bounded by ``acquire_timeout`` and reported as pool exhaustion; when a connection is
  idle the acquisition skips ``wait_for`` (its timer costs more than the acquisition itself).
* Release runs asyncpg's session reset (rollback, ``CLOSE ALL``, ``UNLISTEN *``, ``RESET ALL``, advisory unlocks)
  as usual, but in a task the caller does not wait for: the reset is one round trip, over half the cost of a
  small query, and the connection re-enters the pool only after it, so no session state can reach the next user.
  Behind a transaction pooler (``pooler="transaction"``) the client gives the pool a reset that only rolls back
  an open transaction: session state cannot survive a transaction there anyway, and the reset query would run on
  whichever server connection the pooler picks.
* :meth:`PoolGate.expire` retires every connection (idle ones at once, borrowed ones when returned) after the
  server turned out to be read-only, so that new connections follow the DSN's ``target_session_attrs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from opentelemetry.trace import TracerProvider

from ..resilience.faults import RequestNotSent
from ..settings import PostgresSettings
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from . import codecs, connections
from .classify import LoginRefusedError, PoolAcquireTimeout
from .hosts import connect_each_host, split_hosts
from .statement_spans import traced_connection_class

_log = logging.getLogger(__name__)


class PoolGate:
    """Acquire and release connections of one asyncpg pool, with pool metrics."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_size: int,
        acquire_timeout: float,
        telemetry: ClientTelemetry,
        timing_metrics: bool = True,
    ):
        self.pool = pool
        self._timing = timing_metrics
        self._max = max_size
        self._timeout = acquire_timeout
        self._telemetry = telemetry
        self._pending = 0
        self._releases: set[asyncio.Task[None]] = set()

    def stats(self) -> PoolStats:
        """Idle, used, max and pending figures (read from the metrics exporter's thread)."""
        size = self.pool.get_size()
        idle = self.pool.get_idle_size()
        return PoolStats(idle=idle, used=size - idle, max=self._max, pending=self._pending)

    async def acquire(self) -> Any:
        """Borrow a connection; errors come out as RequestNotSent (or PoolAcquireTimeout inside it)."""
        pool = self.pool
        started = time.perf_counter()
        try:
            if pool.get_idle_size() > 0:
                conn = await pool.acquire()
            else:
                conn = await self._wait(pool)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise RequestNotSent(exc) from exc
        if self._timing:
            self._telemetry.pool_wait(time.perf_counter() - started)
        return conn

    async def _wait(self, pool: asyncpg.Pool) -> Any:
        busy = pool.get_size() >= self._max
        self._pending += 1
        try:
            return await pool.acquire(timeout=self._timeout)
        except TimeoutError as exc:
            self._telemetry.pool_timeout()
            if busy:
                raise PoolAcquireTimeout(
                    f"all {self._max} pooled connections stayed busy for {self._timeout:g} s"
                ) from exc
            raise
        finally:
            self._pending -= 1

    def release(self, conn: Any, borrowed_at: float) -> None:
        """Return ``conn`` to the pool in the background (reset first); never raises."""
        if self._timing:
            self._telemetry.pool_use(time.perf_counter() - borrowed_at)
        task = asyncio.get_running_loop().create_task(self._release(conn))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, conn: Any) -> None:
        try:
            await self.pool.release(conn)
        except Exception:
            _log.debug("connection release failed; asyncpg discards the connection", exc_info=True)

    async def expire(self) -> None:
        """Replace every pooled connection: idle ones on their next acquire, borrowed ones when released."""
        await self.pool.expire_connections()

    async def drain(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) for background releases to finish."""
        if self._releases:
            await asyncio.wait(list(self._releases), timeout=timeout)

    async def close(self, timeout: float) -> None:
        """Close the pool gracefully within ``timeout`` seconds, then terminate what is left."""
        deadline = time.monotonic() + timeout
        await self.drain(timeout)
        try:
            await asyncio.wait_for(self.pool.close(), max(0.0, deadline - time.monotonic()))
        except (TimeoutError, Exception):
            _log.warning("pool did not close within %.1f s; terminating its connections", timeout)
            self.pool.terminate()
        for task in list(self._releases):
            task.cancel()


async def create_gate(
    s: PostgresSettings, telemetry: ClientTelemetry, tracer_provider: TracerProvider | None
) -> PoolGate:
    """Create the asyncpg pool for ``s`` (codecs, telemetry of each connect, pooler mode) and its gate.

    A failure is wrapped in ``RequestNotSent``: nothing was sent yet.
    """
    connection_class: type[asyncpg.Connection] = asyncpg.Connection
    if s.statement_spans:
        connection_class = traced_connection_class(tracer_provider)
    multi_host = len(split_hosts(s.resolved_dsn().get_secret_value())) > 1

    async def connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
        started = time.perf_counter()
        try:
            conn = await connect_each_host(*args, **kwargs)  # each host of a multi-host DSN gets the full timeout
        except asyncpg.ProtocolViolationError as exc:  # refused at login (PgBouncer's errors): transient
            raise LoginRefusedError(f"login refused ({exc.sqlstate})") from exc
        telemetry.pool_create(time.perf_counter() - started)
        if multi_host:
            connections.name_server(telemetry, conn)
        return conn

    extra: dict[str, Any] = {}
    if s.ssl is not None:
        extra["ssl"] = s.ssl
    try:
        pool = await asyncpg.create_pool(
            s.resolved_dsn().get_secret_value(),
            # One connection up front so bad credentials fail here; min_size=0 keeps asyncpg's own background
            # reconnect loop (which bypasses the breaker and logs a traceback a second) switched off.
            init_size=max(1, s.min_size),
            min_size=0,
            max_size=s.max_size,
            command_timeout=s.command_timeout,
            timeout=s.connect_timeout,
            statement_cache_size=s.effective_statement_cache_size(),
            server_settings={"application_name": s.application_name},
            init=codecs.register,
            connect=connect,
            # Behind a transaction pooler no session state survives a transaction, and the default reset query
            # (RESET ALL, UNLISTEN *, advisory unlocks) would run on whichever server connection the pooler
            # picks. asyncpg still rolls back an open transaction before calling this.
            reset=connections.no_session_reset if s.pooler == "transaction" else None,
            connection_class=connection_class,
            **extra,
        )
    except Exception as exc:
        raise RequestNotSent(exc) from exc
    return PoolGate(
        pool,
        max_size=s.max_size,
        acquire_timeout=s.acquire_timeout,
        telemetry=telemetry,
        timing_metrics=s.pool_timing_metrics,
    )

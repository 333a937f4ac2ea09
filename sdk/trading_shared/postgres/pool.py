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

from ..resilience.faults import RequestNotSent
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from .classify import PoolAcquireTimeout

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

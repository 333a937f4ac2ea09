"""Client factories with leak checks, fault bookkeeping and the concurrent writer loop of the reliability suite."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis
from opentelemetry.trace import Tracer

from support.leaks import eventually, pg_backend_count, redis_client_count
from support.otel import Otel
from support.proxy import FaultProxy
from support.servers import PostgresServer, RedisServer
from trading_shared import PostgresClient, PostgresSettings, RedisClient, RedisSettings

from .history import LEDGER, History

#: Watchdog tick of the SDK's deadline (pipeline.py: min(0.05, deadline / 10)).
TICK = 0.05
#: A call must return within its deadline plus this much: two watchdog ticks, plus the time the cancelled attempt
#: takes to unwind (pool release is in the background) and event-loop jitter on a loaded 2-core CI runner.
DEADLINE_TOLERANCE = 2 * TICK + 0.15

#: Settings for history tests: retries fast and many, deadline short, breaker tolerant (it is tested on its own).
PG_FAULT_SETTINGS: dict[str, Any] = {
    "retry": {"max_attempts": 8, "initial_backoff": 0.02, "max_backoff": 0.2, "jitter": 0.02, "deadline": 2.0},
    "breaker": {"fail_max": 1000, "reset_timeout": 0.3},
    "connect_timeout": 0.5,
    "acquire_timeout": 1.0,
    "command_timeout": 1.0,
    "min_size": 1,
    "max_size": 6,
}


def with_port(dsn: str, port: int) -> str:
    """The DSN with its port replaced (to go through a proxy)."""
    parts = urlsplit(dsn)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    host = hostport.rsplit(":", 1)[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated with ``overrides``, nested dicts (retry, breaker) merged one level deep."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


class PgEnv:
    """Builds PostgresClients on one test database, optionally behind FaultProxies; checks for leaks at the end.

    Every client gets an ``application_name`` unique to the test, so its server-side backends can be counted.
    :meth:`close_all` (also run by the fixture at teardown) checks that each pool is back to idle == size, closes
    the clients, and waits until the server has no backend left with that name (the baseline is 0).
    """

    def __init__(self, server: PostgresServer, dsn: str, otel: Otel) -> None:
        self.server = server
        self.dsn = dsn
        self.otel = otel
        self.app = f"rel-{uuid.uuid4().hex[:10]}"
        self.clients: list[PostgresClient] = []
        self.proxies: list[FaultProxy] = []
        self.problems: list[str] = []

    async def proxy(self) -> FaultProxy:
        """A FaultProxy in front of the server (closed at teardown)."""
        proxy = await FaultProxy.start(self.server.host, self.server.port, connect_timeout=2.0)
        self.proxies.append(proxy)
        return proxy

    def client(self, proxy: FaultProxy | None = None, **overrides: Any) -> PostgresClient:
        """A client with :data:`PG_FAULT_SETTINGS` (overridable), through ``proxy`` if given."""
        dsn = with_port(self.dsn, proxy.port) if proxy is not None else self.dsn
        values = merged({**PG_FAULT_SETTINGS, "dsn": dsn, "application_name": self.app}, overrides)
        pg = PostgresClient(PostgresSettings(**values), **self.otel.providers())
        self.clients.append(pg)
        return pg

    async def admin(self) -> asyncpg.Connection:
        """A raw, direct connection (no SDK, no proxy) for set-up and read-back; close it yourself."""
        return await asyncpg.connect(self.dsn, timeout=5, server_settings={"application_name": "rel-admin"})

    async def backends(self) -> int:
        """Server backends of this test's clients."""
        return await pg_backend_count(self.dsn, self.app)

    async def heal(self) -> None:
        """Undo every fault: proxies back to pass-through, server thawed and running."""
        for proxy in self.proxies:
            with contextlib.suppress(RuntimeError):
                proxy.pass_through()
        await asyncio.to_thread(self.server.ensure_running)

    async def close_all(self) -> None:
        """Leak checks, then close: pools idle == size, clients closed, server backends back to the baseline (0)."""
        await self.heal()
        for pg in self.clients:
            pool = pg.pool
            if pool is not None:

                async def idle(pool: asyncpg.Pool = pool) -> bool:
                    return bool(pool.get_idle_size() == pool.get_size())

                if not await eventually(idle, timeout=5.0):
                    self.problems.append(
                        f"{pg!r}: pool not back to idle == size ({pool.get_idle_size()} idle of {pool.get_size()})"
                    )
            await pg.close(timeout=5.0)
        self.clients.clear()

        async def no_backends() -> bool:
            return await self.backends() == 0

        if not await eventually(no_backends, timeout=5.0):
            self.problems.append(f"{await self.backends()} server backend(s) named {self.app} left after close")

    async def teardown(self) -> None:
        """Fixture teardown: close what is left, close the proxies, report leaks."""
        try:
            await self.close_all()
        finally:
            for proxy in self.proxies:
                await proxy.close()
        if self.problems:
            raise AssertionError("leaks:\n  " + "\n  ".join(self.problems))


# ---------------------------------------------------------------------------------------------------------- writers


class Workload:
    """Concurrent writers: each loops ``ids = history.new_ids(batch)``; ``await write(ids)`` until stopped.

    Every call runs in its own task, so a nemesis can cancel calls mid-flight (:meth:`cancel_random`) without
    stopping the writer; cancelled calls are recorded as indeterminate. With a ``tracer`` each call runs inside a
    span ``write <path>`` (the SDK's span is its child): :attr:`calls_by_span` maps that span to the call's ids, so
    the SDK's failed-attempt events can be traced back to the writes they hit.
    """

    def __init__(self, tracer: Tracer | None = None) -> None:
        self._stop = asyncio.Event()
        self._writers: list[asyncio.Task[None]] = []
        self._tracer = tracer
        self.inflight: set[asyncio.Task[Any]] = set()
        self.path_of: dict[asyncio.Task[Any], str] = {}
        self.calls = 0
        self.histories: list[History] = []
        self.calls_by_span: dict[int, tuple[History, list[str]]] = {}
        self.writers_of: Counter[str] = Counter()  # path -> writer tasks

    def add(
        self,
        history: History,
        write: Callable[[list[str]], Awaitable[object]],
        *,
        batch: int = 1,
        writers: int = 1,
        pause: float = 0.002,
        make_ids: Callable[[], list[str]] | None = None,
    ) -> None:
        """Start ``writers`` writer tasks for ``history``; ``make_ids`` overrides the ids of each call (counters)."""
        if history not in self.histories:
            self.histories.append(history)
        self.writers_of[history.path] += writers
        for _ in range(writers):
            ids = make_ids or (lambda: history.new_ids(batch))
            self._writers.append(asyncio.create_task(self._writer(history, write, ids, pause)))

    async def _writer(
        self,
        history: History,
        write: Callable[[list[str]], Awaitable[object]],
        make_ids: Callable[[], list[str]],
        pause: float,
    ) -> None:
        while not self._stop.is_set():
            ids = make_ids()
            call = asyncio.create_task(self._call(history, write, ids))
            self.inflight.add(call)
            self.path_of[call] = history.path
            try:
                await asyncio.wait([call])  # never raises: a cancelled call is already recorded
            finally:
                self.inflight.discard(call)
                self.path_of.pop(call, None)
            self.calls += 1
            await asyncio.sleep(pause * random.uniform(0.5, 1.5))

    async def _call(self, history: History, write: Callable[[list[str]], Awaitable[object]], ids: list[str]) -> None:
        if self._tracer is None:
            await history.call(ids, lambda: write(ids))
            return
        with self._tracer.start_as_current_span(f"write {history.path}", record_exception=False) as span:
            self.calls_by_span[span.get_span_context().span_id] = (history, ids)
            await history.call(ids, lambda: write(ids))

    def cancel_random(self, paths: set[str] | None = None) -> bool:
        """Cancel one in-flight call (of one of ``paths``, if given), if any."""
        calls = [t for t in self.inflight if not t.done() and (paths is None or self.path_of.get(t) in paths)]
        if not calls:
            return False
        random.choice(calls).cancel()
        return True

    async def stop(self, timeout: float = 15.0) -> None:
        """Let every writer finish its current call, then return (bounded: a hung call fails the test)."""
        self._stop.set()
        done, pending = await asyncio.wait(self._writers, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()
        if pending:
            await asyncio.wait(pending)
            raise AssertionError(f"{len(pending)} writer(s) still in a call {timeout} s after stop: a call hung")


async def run_for(seconds: float, nemesis: Callable[[], Awaitable[None]] | None = None) -> None:
    """Sleep ``seconds`` (at least), running ``nemesis`` meanwhile (it may take longer; it is awaited)."""
    started = time.monotonic()
    if nemesis is not None:
        await nemesis()
    left = seconds - (time.monotonic() - started)
    if left > 0:
        await asyncio.sleep(left)


def count_fault(kind: str, count: int = 1) -> None:
    """Book ``count`` injected faults of ``kind`` for the session summary."""
    if count:
        LEDGER.fault(kind, count)


async def pg_quiet(pg: PostgresClient) -> None:
    """Wait until the pool is idle (background resets done), so the next chunk on the wire is the next call's."""
    pool = pg.pool
    assert pool is not None

    async def idle() -> bool:
        return bool(pool.get_idle_size() == pool.get_size())

    assert await eventually(idle)


async def wait_for_aof_rewrite(server: RedisServer, timeout: float = 10.0) -> None:
    """Wait until the server has no AOF rewrite running or scheduled (bounded: AssertionError after ``timeout``)."""

    def rewritten() -> bool:
        info = str(server.cli("INFO", "persistence"))
        return "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info

    async def done() -> bool:
        return await asyncio.to_thread(rewritten)

    assert await eventually(done, timeout=timeout, interval=0.02), f"AOF rewrite still running after {timeout} s"


async def wait_until_loading(server: RedisServer, old_pid: int | None, timeout: float = 10.0) -> None:
    """Wait until a new redis-server process (not ``old_pid``) answers and reports ``loading:1`` (observed state,
    not a sleep; AssertionError after ``timeout``)."""

    def now_loading() -> bool:
        # ``pid`` is read while restart() runs in another thread, which may reset the process handle between the
        # property's check and its use (AttributeError): that only means "not yet", like a refused connection.
        try:
            if server.pid in (None, old_pid):
                return False
            return "loading:1" in str(server.cli("INFO", "persistence", timeout=1))
        except Exception:  # not started yet, not listening yet, or refusing INFO
            return False

    async def loading() -> bool:
        return await asyncio.to_thread(now_loading)

    assert await eventually(loading, timeout=timeout, interval=0.005), "the restarted server was never seen loading"


def sql_ids(rows: Sequence[asyncpg.Record]) -> list[str]:
    """The first column of ``rows`` as strings."""
    return [str(r[0]) for r in rows]


# ------------------------------------------------------------------------------------------------------------ Redis

#: Settings for Redis history tests (same spirit as :data:`PG_FAULT_SETTINGS`).
REDIS_FAULT_SETTINGS: dict[str, Any] = {
    "retry": {"max_attempts": 8, "initial_backoff": 0.02, "max_backoff": 0.2, "jitter": 0.02, "deadline": 2.0},
    "breaker": {"fail_max": 1000, "reset_timeout": 0.3},
    "socket_timeout": 1.0,
    "socket_connect_timeout": 0.5,
    "max_connections": 16,
}


class RedisEnv:
    """Builds RedisClients on one server (db :attr:`DB`), optionally behind FaultProxies; checks for leaks.

    Every client is named (CLIENT SETNAME) with a test-unique name, so its server-side connections can be counted
    (the baseline is 0). :meth:`close_all` checks that every pool has no connection in use, closes the clients and
    waits until the server lists no connection with that name.
    """

    DB = 1  # db 0 is left for ballast keys (the LOADING test)

    def __init__(self, server: RedisServer, otel: Otel) -> None:
        self.server = server
        self.otel = otel
        self.name = f"rel-{uuid.uuid4().hex[:10]}"
        self.clients: list[RedisClient] = []
        self.proxies: list[FaultProxy] = []
        self.problems: list[str] = []

    def url(self, port: int | None = None, password: str | None = None) -> str:
        """URL of :attr:`DB` on the server, or through a proxy listening on ``port``."""
        url = self.server.url(db=self.DB, password=password)
        return url if port is None else url.replace(f":{self.server.port}/", f":{port}/")

    async def proxy(self) -> FaultProxy:
        """A FaultProxy in front of the server (closed at teardown)."""
        proxy = await FaultProxy.start(self.server.host, self.server.port, connect_timeout=2.0)
        self.proxies.append(proxy)
        return proxy

    def client(self, proxy: FaultProxy | None = None, **overrides: Any) -> RedisClient:
        """A client with :data:`REDIS_FAULT_SETTINGS` (overridable), through ``proxy`` if given."""
        url = self.url(proxy.port if proxy is not None else None)
        values = merged({**REDIS_FAULT_SETTINGS, "url": url, "name": self.name}, overrides)
        client = RedisClient(RedisSettings(**values), **self.otel.providers())
        self.clients.append(client)
        return client

    def raw(self) -> aioredis.Redis:
        """A plain redis-py client on :attr:`DB` (no SDK, no proxy) for read-back; ``await .aclose()`` it."""
        return aioredis.from_url(self.url(), socket_timeout=5, socket_connect_timeout=5)

    async def connections(self) -> int:
        """Server-side connections named like this test's clients."""
        return await redis_client_count(self.server.url(), self.name)

    async def heal(self) -> None:
        """Undo every fault: proxies back to pass-through, server thawed, awake and running."""
        for proxy in self.proxies:
            with contextlib.suppress(RuntimeError):
                proxy.pass_through()
        await asyncio.to_thread(self.server.ensure_running)

    async def close_all(self) -> None:
        """Leak checks, then close: no pooled connection in use, clients closed, server connections back to 0."""
        await self.heal()
        for client in self.clients:
            pool = client.connection_pool
            if pool is not None:

                async def idle(pool: aioredis.ConnectionPool = pool) -> bool:
                    return bool(pool.get_connection_count()[1][0] == 0)

                if not await eventually(idle, timeout=5.0):
                    self.problems.append(f"{client!r}: connections still in use after the calls ended")
            await client.close(timeout=5.0)
        self.clients.clear()

        async def none_left() -> bool:
            return await self.connections() == 0

        if not await eventually(none_left, timeout=5.0):
            self.problems.append(f"{await self.connections()} server connection(s) named {self.name} left")

    async def teardown(self) -> None:
        """Fixture teardown: close what is left, close the proxies, report leaks."""
        try:
            await self.close_all()
        finally:
            for proxy in self.proxies:
                await proxy.close()
        if self.problems:
            raise AssertionError("leaks:\n  " + "\n  ".join(self.problems))

"""Time bounds: no call hangs, the breaker opens within ``fail_max`` failed calls, and recovery is prompt.

* Under a blackhole (proxy forwards nothing), a frozen server (SIGSTOP) or a stalled Redis (DEBUG SLEEP), every kind
  of call, started together, returns within its deadline plus :data:`~reliability.harness.DEADLINE_TOLERANCE`
  (250 ms: the watchdog ticks every 50 ms, plus unwinding and CI jitter) with DeadlineExceededError. Driver
  timeouts are set far above the deadline, so it is the SDK's own watchdog that ends the calls.
* With the server unreachable, call ``fail_max`` fails with ServiceUnavailableError and opens the breaker, the
  calls before it leave it closed (it counts failed CALLS: each made several attempts), the next call fails with
  CircuitOpenError in microseconds; once the server is back, the first call after ``reset_timeout`` succeeds and
  closes the breaker.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import pytest

from support.leaks import eventually
from support.proxy import FaultProxy
from trading_shared import (
    BulkWriteError,
    CircuitOpenError,
    DeadlineExceededError,
    PostgresClient,
    RedisClient,
    ServiceUnavailableError,
)

from .harness import DEADLINE_TOLERANCE, PgEnv, RedisEnv, count_fault
from .history import LEDGER
from .test_pg_history import SCHEMA

DEADLINE = 0.6
PG_BOUNDED = {
    "retry": {"deadline": DEADLINE, "max_attempts": 50},
    "command_timeout": 30.0,  # far above the deadline: the SDK's watchdog must end the calls
    "connect_timeout": 30.0,
    "acquire_timeout": 30.0,
    "min_size": 1,
    "max_size": 10,
}
REDIS_BOUNDED = {
    "retry": {"deadline": DEADLINE, "max_attempts": 50},
    "socket_timeout": 30.0,
    "socket_connect_timeout": 30.0,
}

Call = Callable[[], Awaitable[object]]


async def _all_bounded(calls: dict[str, Call]) -> None:
    """Start every call at once; each must fail with DeadlineExceededError within DEADLINE + tolerance."""

    async def timed(call: Call) -> tuple[float, BaseException | None]:
        started = time.monotonic()
        try:
            await call()
        except Exception as exc:
            return time.monotonic() - started, exc
        return time.monotonic() - started, None

    results = await asyncio.gather(*(timed(c) for c in calls.values()))
    problems = []
    for name, (took, exc) in zip(calls, results, strict=True):
        LEDGER.bounded(took - DEADLINE)
        if isinstance(exc, BulkWriteError):  # a bulk write reports its chunk's deadline as the cause
            exc = exc.__cause__
        if not isinstance(exc, DeadlineExceededError):
            problems.append(f"{name}: {exc!r} (expected DeadlineExceededError)")
        elif took > DEADLINE + DEADLINE_TOLERANCE:
            problems.append(f"{name}: took {took:.3f} s > {DEADLINE} + {DEADLINE_TOLERANCE} s")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------------ PostgreSQL


def _pg_calls(env: PgEnv, pg: PostgresClient, proxy: FaultProxy | None) -> dict[str, Call]:
    async def tx(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO w_tx VALUES ('t')")

    fresh = env.client(proxy, **PG_BOUNDED)
    return {
        "fetchval": lambda: pg.fetchval("SELECT 1"),
        "execute": lambda: pg.execute("INSERT INTO w_plain VALUES ('p')"),
        "execute_idempotent": lambda: pg.execute(
            "INSERT INTO w_key VALUES ('k', 1) ON CONFLICT DO NOTHING", idempotent=True
        ),
        "transaction": lambda: pg.transaction(tx),
        "bulk_upsert_instruments": lambda: pg.bulk_upsert_instruments([{"symbol": "S", "tick_size": "1"}], "x"),
        "copy_upsert": lambda: pg.copy_upsert("w_copy", [("c", 1)], columns=["id", "v"], key_columns=["id"]),
        "copy_records": lambda: pg.copy_records("w_copyrec", [("r", 1)], columns=["id", "v"]),
        "connect": fresh.connect,  # a new pool: the connection itself hangs
    }


async def _pg_ready(env: PgEnv, proxy: FaultProxy | None) -> PostgresClient:
    admin = await env.admin()
    try:
        await admin.execute(SCHEMA)
    finally:
        await admin.close()
    pg = env.client(proxy, **PG_BOUNDED)
    await pg.fetchval("SELECT 1")
    return pg


async def test_pg_calls_end_by_their_deadline_under_a_blackhole(pg_env: PgEnv) -> None:
    proxy = await pg_env.proxy()
    pg = await _pg_ready(pg_env, proxy)
    calls = _pg_calls(pg_env, pg, proxy)
    proxy.blackhole()
    count_fault("pg.blackhole")
    await _all_bounded(calls)
    proxy.pass_through()
    assert await pg.fetchval("SELECT 2") == 2


async def test_pg_calls_end_by_their_deadline_when_the_server_is_frozen(pg_env: PgEnv) -> None:
    pg = await _pg_ready(pg_env, None)
    calls = _pg_calls(pg_env, pg, None)
    await asyncio.to_thread(pg_env.server.freeze)
    count_fault("pg.freeze")
    try:
        await _all_bounded(calls)
    finally:
        await asyncio.to_thread(pg_env.server.thaw)
    assert await pg.fetchval("SELECT 2") == 2


# ------------------------------------------------------------------------------------------------------------ Redis


def _redis_calls(env: RedisEnv, r: RedisClient, proxy: FaultProxy | None) -> dict[str, Call]:
    fresh = env.client(proxy, **REDIS_BOUNDED)
    return {
        "get": lambda: r.get("k"),
        "set": lambda: r.set("k", b"v"),
        "incr": lambda: r.incr("n"),
        "lpush": lambda: r.lpush("l", b"x"),
        "xadd": lambda: r.xadd("s", {"f": 1}),
        "xadd_explicit_id": lambda: r.xadd("s2", {"f": 1}, id="5-1"),
        "xadd_bulk": lambda: r.xadd_bulk("s3", [{"f": i} for i in range(30)], chunk_size=10, dead_letter=False),
        "connect": fresh.connect,
    }


async def _redis_ready(env: RedisEnv, proxy: FaultProxy | None) -> RedisClient:
    r = env.client(proxy, **REDIS_BOUNDED)
    await r.set("k", b"v")
    return r


async def test_redis_calls_end_by_their_deadline_under_a_blackhole(redis_env: RedisEnv) -> None:
    proxy = await redis_env.proxy()
    r = await _redis_ready(redis_env, proxy)
    calls = _redis_calls(redis_env, r, proxy)
    proxy.blackhole()
    count_fault("redis.blackhole")
    await _all_bounded(calls)
    proxy.pass_through()
    assert await r.get("k") == b"v"


async def test_redis_calls_end_by_their_deadline_when_the_server_is_frozen(redis_env: RedisEnv) -> None:
    r = await _redis_ready(redis_env, None)
    calls = _redis_calls(redis_env, r, None)
    await asyncio.to_thread(redis_env.server.freeze)
    count_fault("redis.freeze")
    try:
        await _all_bounded(calls)
    finally:
        await asyncio.to_thread(redis_env.server.thaw)
    assert await r.get("k") == b"v"


async def _until_asleep(env: RedisEnv) -> None:
    """Wait until the server is seen stalled: a PING on a fresh connection gets no answer within 50 ms."""

    def stalled() -> bool:
        try:
            env.server.cli("PING", timeout=0.05)
        except (OSError, TimeoutError):
            return True
        return False

    async def asleep() -> bool:
        return await asyncio.to_thread(stalled)

    assert await eventually(asleep, timeout=5.0, interval=0.01), "DEBUG SLEEP never stalled the server"


async def test_redis_calls_end_by_their_deadline_while_the_server_sleeps(redis_env: RedisEnv) -> None:
    r = await _redis_ready(redis_env, None)
    calls = _redis_calls(redis_env, r, None)
    await r.connect()
    stall = asyncio.create_task(asyncio.to_thread(redis_env.server.cli, "DEBUG", "SLEEP", 1.5, timeout=10))
    count_fault("redis.debug_sleep")
    await _until_asleep(redis_env)
    try:
        await _all_bounded(calls)
    finally:
        await stall
    assert await r.get("k") == b"v"


# ---------------------------------------------------------------------------------------------------------- breaker

FAIL_MAX = 3
RESET = 0.5
BREAKER = {
    "breaker": {"fail_max": FAIL_MAX, "reset_timeout": RESET},
    "retry": {"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "jitter": 0.0, "deadline": 0.5},
}


async def _breaker_cycle(
    proxy: FaultProxy,
    breaker_state: Callable[[], str],
    call: Call,
    fault_on: Callable[[], Awaitable[None]],
    fault_off: Callable[[], Awaitable[None]],
    *,
    several_attempts: bool,
) -> None:
    await call()  # connected and healthy
    await fault_on()
    for n in range(1, FAIL_MAX + 1):
        with pytest.raises(ServiceUnavailableError) as info:
            await call()
        assert not isinstance(info.value, CircuitOpenError), f"call {n} was rejected by the breaker"
        if several_attempts:
            assert info.value.attempts > 1  # retried: the breaker counts the call once, not per attempt
        assert breaker_state() == ("open" if n == FAIL_MAX else "closed"), f"after failed call {n}"
    sent, accepted = proxy.stats.bytes_to_server, proxy.stats.connections_accepted
    rejected = []
    for _ in range(50):
        started = time.perf_counter()
        with pytest.raises(CircuitOpenError):
            await call()
        rejected.append(time.perf_counter() - started)
    assert sorted(rejected)[25] < 0.001, rejected  # open: microseconds per call (the median; GC may pause one)...
    assert (proxy.stats.bytes_to_server, proxy.stats.connections_accepted) == (sent, accepted)  # ...and no I/O
    opened = time.monotonic()
    await fault_off()
    await asyncio.sleep(max(0.0, RESET - (time.monotonic() - opened)) + 0.02)
    await call()  # the first call after reset_timeout is the trial: it succeeds and closes the breaker
    assert breaker_state() == "closed"


@pytest.mark.parametrize("fault", ["connection_reset", "server_stopped", "blackhole"])
async def test_pg_breaker_opens_within_fail_max_calls_and_recovers(pg_env: PgEnv, fault: str) -> None:
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy, **BREAKER)

    async def on() -> None:
        count_fault(f"pg.{fault}")
        if fault == "connection_reset":
            proxy.reset()
        elif fault == "blackhole":
            proxy.blackhole()
        else:
            await asyncio.to_thread(pg_env.server.stop, "immediate")

    async def off() -> None:
        proxy.pass_through()
        await asyncio.to_thread(pg_env.server.ensure_running)

    await _breaker_cycle(
        proxy,
        lambda: pg.breaker.state.value,
        lambda: pg.fetchval("SELECT 1"),
        on,
        off,
        several_attempts=fault != "blackhole",
    )


@pytest.mark.parametrize("fault", ["connection_reset", "server_killed", "blackhole"])
async def test_redis_breaker_opens_within_fail_max_calls_and_recovers(redis_env: RedisEnv, fault: str) -> None:
    proxy = await redis_env.proxy()
    r = redis_env.client(proxy, **BREAKER)

    async def on() -> None:
        count_fault(f"redis.{fault}")
        if fault == "connection_reset":
            proxy.reset()
        elif fault == "blackhole":
            proxy.blackhole()
        else:
            await asyncio.to_thread(redis_env.server.kill)

    async def off() -> None:
        proxy.pass_through()
        await asyncio.to_thread(redis_env.server.ensure_running)

    await _breaker_cycle(
        proxy, lambda: r.breaker.state.value, lambda: r.get("k"), on, off, several_attempts=fault != "blackhole"
    )

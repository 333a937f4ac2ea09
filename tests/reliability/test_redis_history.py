"""Redis write paths under faults, checked like Jepsen: lost = unexpected = duplicated = 0.

Every test runs writers on all write paths at once through one RedisClient behind a FaultProxy, against a private
redis-server with ``appendfsync always`` (acknowledged writes survive restarts and SIGKILL), injects one kind of
fault for ~2 s, heals, closes the client (leak checks), reads the data back with a plain redis-py client and checks
every history. Paths:

================  ===============================================================  ===============================
path              call                                                             a duplicate would look like
================  ===============================================================  ===============================
set               ``set(key, id)``, one key per write, the key holding a space     impossible by the key
                  and a newline (idempotent: re-sent after a lost reply)
incr              ``incr(counter)``, one counter per writer (never re-sent once    counter > ok + indeterminate
                  it may have been applied)
lpush             ``lpush(list, id)`` (never re-sent)                              the id twice in the list
xadd              ``xadd(stream, {id})`` with a server-assigned ID (never re-sent)  the id in two entries
xadd_explicit_id  ``xadd(stream, {id}, id="<n>-1")``, one stream per writer         the id in two entries
                  (re-sent: the SDK adds the entry only if it is absent)
xadd_bulk         ``xadd_bulk(stream, 30 messages, chunk_size=10)`` (each chunk     the id in two entries
                  one atomic, deduplicated script call; BulkWriteError per item)
================  ===============================================================  ===============================
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import PoolExhaustedError, RedisClient
from trading_shared.telemetry import names

from .harness import RedisEnv, Workload, count_fault, run_for
from .history import LEDGER, History, Report, check, check_counter

Write = Callable[[list[str]], Awaitable[object]]


@dataclass
class RedisPath:
    """One write path: a write function per writer, optional per-writer ids (counters), and how to read back."""

    name: str
    batch: int
    writers: int
    make_write: Callable[[RedisClient, int], Write]
    read: Callable[[aioredis.Redis], Awaitable[list[str] | dict[str, int]]]
    counter_of: Callable[[int], str] | None = None


def _set(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.set(f"rs: {ids[0]}\n", ids[0])


async def _read_set(raw: aioredis.Redis) -> list[str]:
    return [k.decode()[4:-1] async for k in raw.scan_iter(match=b"rs: *", count=1000)]


def _incr(r: RedisClient, w: int) -> Write:
    return lambda _ids: r.incr(f"ctr:{w}")


async def _read_counters(raw: aioredis.Redis) -> dict[str, int]:
    keys = [k async for k in raw.scan_iter(match=b"ctr:*", count=1000)]
    values = await raw.mget(keys) if keys else []
    return {k.decode(): int(v) for k, v in zip(keys, values, strict=True)}


def _lpush(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.lpush("rl", ids[0])


async def _read_list(raw: aioredis.Redis) -> list[str]:
    return [v.decode() for v in await raw.lrange("rl", 0, -1)]


def _xadd(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.xadd("rx", {"id": ids[0]})


def _xadd_explicit(r: RedisClient, w: int) -> Write:
    seq = itertools.count(1)
    return lambda ids: r.xadd(f"rxe:{w}", {"id": ids[0]}, id=f"{next(seq)}-1")


def _xadd_bulk(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.xadd_bulk("rb", [{"id": i} for i in ids], chunk_size=10)


def _read_stream(pattern: bytes) -> Callable[[aioredis.Redis], Awaitable[list[str]]]:
    async def read(raw: aioredis.Redis) -> list[str]:
        out: list[str] = []
        async for key in raw.scan_iter(match=pattern, count=1000):
            if key.startswith(b"dlq:"):
                continue
            out += [fields[b"id"].decode() for _, fields in await raw.xrange(key)]
        return out

    return read


PATHS = [
    RedisPath("redis.set", 1, 2, _set, _read_set),
    RedisPath("redis.incr", 1, 2, _incr, _read_counters, counter_of=lambda w: f"ctr:{w}"),
    RedisPath("redis.lpush", 1, 2, _lpush, _read_list),
    RedisPath("redis.xadd", 1, 2, _xadd, _read_stream(b"rx")),
    RedisPath("redis.xadd_explicit_id", 1, 2, _xadd_explicit, _read_stream(b"rxe:*")),
    RedisPath("redis.xadd_bulk", 30, 1, _xadd_bulk, _read_stream(b"rb")),
]

#: Error types a caller may see under infrastructure faults.
SDK_ERRORS = {
    "ServiceUnavailableError",
    "OutcomeUnknownError",
    "DeadlineExceededError",
    "CircuitOpenError",
    "PoolExhaustedError",
    "BulkWriteError",
    "CancelledError",  # only where the test cancels calls
}


@dataclass
class Ctx:
    """What a nemesis may act on."""

    env: RedisEnv
    proxy: FaultProxy
    client: RedisClient
    workload: Workload

    @property
    def server(self) -> RedisServer:
        return self.env.server


# ------------------------------------------------------------------------------------------------------ nemeses


async def _lose_replies(ctx: Ctx) -> None:
    before = ctx.proxy.stats.replies_lost
    for _ in range(16):
        ctx.proxy.lose_next_reply()
        await asyncio.sleep(0.12)
    ctx.proxy.pass_through()
    lost = ctx.proxy.stats.replies_lost - before
    count_fault("redis.reply_lost", lost)
    assert lost >= 5


async def _resets(ctx: Ctx) -> None:
    for _ in range(8):
        ctx.proxy.reset()
        count_fault("redis.connection_reset")
        await asyncio.sleep(random.uniform(0.02, 0.08))
        ctx.proxy.pass_through()
        await asyncio.sleep(0.2)


async def _latency(ctx: Ctx) -> None:
    for delay in (0.05, 0.3, 0.01, 0.6, 0.1):  # 0.6 s each way is past socket_timeout (1 s) for a round trip
        ctx.proxy.latency(delay)
        count_fault("redis.latency")
        await asyncio.sleep(0.4)
    ctx.proxy.pass_through()


async def _blackhole(ctx: Ctx) -> None:
    for hold in (0.6, 2.4):  # shorter than the 2 s deadline, then longer
        ctx.proxy.blackhole()
        count_fault("redis.blackhole")
        await asyncio.sleep(hold)
        ctx.proxy.pass_through()
        await asyncio.sleep(0.4)


def _restart(mode: str) -> Callable[[Ctx], Awaitable[None]]:
    async def nemesis(ctx: Ctx) -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            await asyncio.to_thread(ctx.server.restart, mode)
            count_fault(f"redis.restart_{mode}")
        await asyncio.sleep(0.4)

    return nemesis


async def _freeze(ctx: Ctx) -> None:
    for hold in (0.6, 2.4):
        await asyncio.to_thread(ctx.server.freeze)
        count_fault("redis.freeze")
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(ctx.server.thaw)
        await asyncio.sleep(0.4)


async def _debug_sleep(ctx: Ctx) -> None:
    for seconds in (0.5, 2.4):  # the whole server stalls; the second one outlasts socket_timeout and the deadline
        await asyncio.to_thread(ctx.server.cli, "DEBUG", "SLEEP", seconds, timeout=seconds + 5)
        count_fault("redis.debug_sleep")
        await asyncio.sleep(0.4)


async def _loading(ctx: Ctx) -> None:
    """A real LOADING window: 300k ballast keys in db 0 make the restarted server load its AOF for ~0.8 s, during
    which it answers every command with -LOADING (refused, not applied: even INCR may be re-sent)."""
    server = ctx.server
    await asyncio.to_thread(server.cli, "DEBUG", "POPULATE", 300_000, "ballast", 64)  # into db 0
    await asyncio.to_thread(server.cli, "BGREWRITEAOF")

    def rewritten() -> bool:
        info = str(server.cli("INFO", "persistence"))
        return "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info

    for _ in range(500):
        if await asyncio.to_thread(rewritten):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("AOF rewrite did not finish within 10 s")
    await asyncio.to_thread(server.restart, "kill")  # start() waits for PONG: until the AOF is loaded
    count_fault("redis.loading")
    await asyncio.sleep(0.3)


async def _client_kill(ctx: Ctx) -> None:
    for _ in range(20):
        await asyncio.sleep(0.1)
        listing = await asyncio.to_thread(ctx.server.cli, "CLIENT", "LIST")
        ids = [
            line.split("id=", 1)[1].split(" ", 1)[0]
            for line in str(listing).splitlines()
            if f" name={ctx.env.name} " in line
        ]
        for client_id in ids:
            killed = await asyncio.to_thread(ctx.server.cli, "CLIENT", "KILL", "ID", client_id)
            count_fault("redis.client_kill", int(killed))


async def _cancel_calls(ctx: Ctx) -> None:
    for _ in range(100):
        await asyncio.sleep(random.uniform(0.005, 0.03))
        if ctx.workload.cancel_random():
            count_fault("redis.task_cancelled")


async def _exhaust_pool(ctx: Ctx) -> None:
    """Blocking reads on the main pool take every connection for ~1.2 s: writers fail fast with PoolExhaustedError
    (redis-py's pool does not queue: nothing was sent)."""
    size = ctx.client.settings.max_connections

    async def hold(until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            try:
                await ctx.client.run("BLPOP", lambda c: c.execute_command("BLPOP", "rel:nothing", 0.3), idempotent=True)
            except PoolExhaustedError:
                await asyncio.sleep(0.001)  # a writer has it: take it as soon as it is back

    for _ in range(2):
        until = asyncio.get_running_loop().time() + 1.2
        count_fault("redis.pool_exhausted")
        await asyncio.gather(*(hold(until) for _ in range(size)))
        await asyncio.sleep(0.3)


NEMESES: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    "reply_lost": _lose_replies,
    "connection_reset": _resets,
    "latency": _latency,
    "blackhole": _blackhole,
    "restart_term": _restart("term"),
    "restart_kill": _restart("kill"),
    "freeze": _freeze,
    "debug_sleep": _debug_sleep,
    "loading": _loading,
    "client_kill": _client_kill,
    "task_cancelled": _cancel_calls,
    "pool_exhausted": _exhaust_pool,
}


@pytest.mark.parametrize("fault", list(NEMESES))
async def test_redis_writes_are_never_lost_duplicated_or_unexpected(redis_env: RedisEnv, fault: str) -> None:
    proxy = await redis_env.proxy()
    client = redis_env.client(proxy)
    await client.connect()
    histories = {p.name: History(p.name) for p in PATHS}
    workload = Workload()
    for path in PATHS:
        for w in range(path.writers):
            make_ids = None
            if path.counter_of is not None:
                key = path.counter_of(w)
                make_ids = lambda key=key: [key]  # noqa: E731
            workload.add(histories[path.name], path.make_write(client, w), batch=path.batch, make_ids=make_ids)
    try:
        await run_for(0.3)
        await run_for(2.0, lambda: NEMESES[fault](Ctx(redis_env, proxy, client, workload)))
        await redis_env.heal()
        await run_for(0.3)
    finally:
        await workload.stop()
        await redis_env.close_all()

    raw = redis_env.raw()
    try:
        observed = {p.name: await p.read(raw) for p in PATHS}
    finally:
        await raw.aclose()
    reports: list[Report] = []
    for path in PATHS:
        seen = observed[path.name]
        history = histories[path.name]
        report = check_counter(history, seen) if isinstance(seen, dict) else check(history, seen)
        reports.append(LEDGER.add(report))
    summary = "\n".join(r.summary() for r in reports)
    for report in reports:
        assert report.ok > 0, f"{report.path} never succeeded:\n{summary}"
        report.assert_clean()
    seen_errors = {e for r in reports for e in r.errors}
    assert seen_errors <= SDK_ERRORS, f"callers saw raw driver errors {seen_errors - SDK_ERRORS}:\n{summary}"
    if fault == "pool_exhausted":
        assert any(r.errors["PoolExhaustedError"] for r in reports), summary
    if fault == "loading":  # the server really answered -LOADING, and those refusals were retried
        loading = [v for a, v in redis_env.otel.points(names.RETRIES) if a.get(names.ERROR_TYPE) == "BusyLoadingError"]
        assert sum(loading) > 0, "no LOADING reply was seen"

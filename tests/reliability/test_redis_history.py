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
incr              ``incr(ctr:<id>)``, one counter per write (never re-sent once    the counter at 2
                  it may have been applied): each increment is named, so the
                  check is exact, not a net count that offsets
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis

from support.servers import RedisServer
from trading_shared import PoolExhaustedError, RedisClient
from trading_shared.telemetry import names

from . import faults
from .faults import Ctx, Nemesis
from .harness import RedisEnv, Workload, run_for, wait_for_aof_rewrite, wait_until_loading
from .history import LEDGER, History, Report, check

Write = Callable[[list[str]], Awaitable[object]]


@dataclass
class RedisPath:
    """One write path: a write function per writer, optional per-writer ids (counters), and how to read back."""

    name: str
    batch: int
    writers: int
    make_write: Callable[[RedisClient, int], Write]
    read: Callable[[aioredis.Redis], Awaitable[list[str]]]
    keyed: bool = False  # the read-back cannot hold an id twice by construction: duplicated is not applicable


def _set(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.set(f"rs: {ids[0]}\n", ids[0])


async def _read_set(raw: aioredis.Redis) -> list[str]:
    return [k.decode()[4:-1] async for k in raw.scan_iter(match=b"rs: *", count=1000)]


def _incr(r: RedisClient, _w: int) -> Write:
    return lambda ids: r.incr(f"ctr:{ids[0]}")


async def _read_counters(raw: aioredis.Redis) -> list[str]:
    """Each counter's id, as many times as it was incremented (2 is an increment applied twice)."""
    keys = [k async for k in raw.scan_iter(match=b"ctr:*", count=1000)]
    values = await raw.mget(keys) if keys else []
    return [k.decode()[4:] for k, v in zip(keys, values, strict=True) for _ in range(int(v))]


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
    RedisPath("redis.set", 1, 2, _set, _read_set, keyed=True),
    RedisPath("redis.incr", 1, 2, _incr, _read_counters),
    RedisPath("redis.lpush", 1, 2, _lpush, _read_list),
    RedisPath("redis.xadd", 1, 2, _xadd, _read_stream(b"rx")),
    RedisPath("redis.xadd_explicit_id", 1, 2, _xadd_explicit, _read_stream(b"rxe:*"), keyed=True),
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


# ------------------------------------------------------------------------------------------------------ nemeses
# The scripts both servers share (lost replies, resets, latency, blackhole, freeze, cancelled calls) are in faults.py.


async def _debug_sleep(ctx: Ctx) -> None:
    server: RedisServer = ctx.env.server
    for seconds in (0.5, 2.4):  # the whole server stalls; the second one outlasts socket_timeout and the deadline
        await asyncio.to_thread(server.cli, "DEBUG", "SLEEP", seconds, timeout=seconds + 5)
        ctx.count("debug_sleep")
        await asyncio.sleep(0.4)


async def _loading(ctx: Ctx) -> None:
    """A real LOADING window: 300k ballast keys in db 0 make the restarted server load its AOF for ~0.8 s, during
    which it answers every command with -LOADING (refused, not applied: even INCR may be re-sent)."""
    server: RedisServer = ctx.env.server
    await asyncio.to_thread(server.cli, "DEBUG", "POPULATE", 300_000, "ballast", 64)  # into db 0
    await asyncio.to_thread(server.cli, "BGREWRITEAOF")
    await wait_for_aof_rewrite(server)
    old_pid = server.pid
    restart = asyncio.create_task(asyncio.to_thread(server.restart, "kill"))  # returns once the AOF is loaded
    ctx.count("loading")
    await wait_until_loading(server, old_pid)
    await ctx.client.set("loading-probe", b"1")  # at least one call meets -LOADING (it is retried through it)
    await restart
    await asyncio.sleep(0.3)


async def _client_kill(ctx: Ctx) -> None:
    server: RedisServer = ctx.env.server
    for _ in range(20):
        await asyncio.sleep(0.1)
        listing = await asyncio.to_thread(server.cli, "CLIENT", "LIST")
        ids = [
            line.split("id=", 1)[1].split(" ", 1)[0]
            for line in str(listing).splitlines()
            if f" name={ctx.env.name} " in line
        ]
        for client_id in ids:
            killed = await asyncio.to_thread(server.cli, "CLIENT", "KILL", "ID", client_id)
            ctx.count("client_kill", int(killed))


async def _exhaust_pool(ctx: Ctx) -> None:
    """Blocking reads on the main pool take every connection for ~1.2 s: writers fail fast with PoolExhaustedError
    (redis-py's pool does not queue: nothing was sent)."""
    client: RedisClient = ctx.client
    size = client.settings.max_connections

    async def hold(until: float) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < until:
            try:
                await client.run("BLPOP", lambda c: c.execute_command("BLPOP", "rel:nothing", 0.3), idempotent=True)
            except PoolExhaustedError:
                await asyncio.sleep(0.001)  # a writer has it: take it as soon as it is back

    for _ in range(2):
        until = asyncio.get_running_loop().time() + 1.2
        ctx.count("pool_exhausted")
        await asyncio.gather(*(hold(until) for _ in range(size)))
        await asyncio.sleep(0.3)


NEMESES: dict[str, Nemesis] = {
    **faults.SHARED,
    "restart_term": faults.restart("term"),
    "restart_kill": faults.restart("kill"),
    "debug_sleep": _debug_sleep,
    "loading": _loading,
    "client_kill": _client_kill,
    "pool_exhausted": _exhaust_pool,
}


@pytest.mark.parametrize("fault", list(NEMESES))
async def test_redis_writes_are_never_lost_duplicated_or_unexpected(redis_env: RedisEnv, fault: str) -> None:
    proxy = await redis_env.proxy()
    client = redis_env.client(proxy)
    await client.connect()
    histories = {p.name: History(p.name) for p in PATHS}
    workload = Workload(tracer=redis_env.otel.tracer_provider.get_tracer("reliability"))
    for path in PATHS:
        for w in range(path.writers):
            workload.add(histories[path.name], path.make_write(client, w), batch=path.batch)
    faults_before = sum(LEDGER.faults.values())
    try:
        await run_for(0.3)
        ctx = faults.Ctx("redis", redis_env, proxy, client, workload, list(histories.values()))
        await run_for(2.0, lambda: NEMESES[fault](ctx))
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
    cut = faults.mark_hits(redis_env.otel.spans(), workload, proxy)
    reports: list[Report] = [LEDGER.add(check(histories[p.name], observed[p.name], keyed=p.keyed)) for p in PATHS]
    faults.verify(reports, workload, fault, sum(LEDGER.faults.values()) - faults_before, cut, SDK_ERRORS)
    if fault == "pool_exhausted":
        assert any(r.errors["PoolExhaustedError"] for r in reports), "\n".join(r.summary() for r in reports)
    if fault == "loading":  # the server really answered -LOADING, and those refusals were retried
        loading = [v for a, v in redis_env.otel.points(names.RETRIES) if a.get(names.ERROR_TYPE) == "BusyLoadingError"]
        assert sum(loading) > 0, "no LOADING reply was seen"

"""PostgreSQL write paths under faults, checked like Jepsen: lost = unexpected = duplicated = 0.

Every test runs writers on all six write paths at once through one PostgresClient behind a FaultProxy, injects one
kind of fault for ~2 s, heals, closes the client (leak checks), reads the tables back over a direct connection and
checks every history. Paths:

==================  =============================================================  ==================================
path                call                                                           what a duplicate would look like
==================  =============================================================  ==================================
execute_key         ``execute(INSERT .. ON CONFLICT (id) DO NOTHING, idempotent)``  impossible by the key: lost and
                                                                                   unexpected are what is checked
execute_plain       ``execute(INSERT ..)`` into a table without a key (not          the id twice
                    idempotent: never re-sent once it may have been applied)
transaction         ``transaction(fn)`` serializable: insert the id into a table   the id twice; also checked:
                    without a key, bump a shared total (conflicts: 40001 re-runs)  the total equals the row count
bulk_upsert         ``bulk_upsert_instruments`` (the legacy jsonb[] function),     impossible by the key
                    5 instruments per call
copy_upsert         ``copy_upsert``, 20 rows per call                              impossible by the key
copy_records        ``copy_records`` (plain COPY, not idempotent), 20 rows a call  the ids twice
==================  =============================================================  ==================================
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from support.proxy import FaultProxy
from trading_shared import PostgresClient

from .harness import PgEnv, Workload, count_fault, run_for, sql_ids
from .history import LEDGER, History, Report, check

LEGACY_FUNCTION = """
CREATE TABLE instruments (
    exchange text NOT NULL, symbol text NOT NULL, tick_size numeric, meta jsonb,
    PRIMARY KEY (exchange, symbol)
);
CREATE FUNCTION bulk_upsert_instruments(items jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE item jsonb;
BEGIN
    FOREACH item IN ARRAY items LOOP
        INSERT INTO instruments (exchange, symbol, tick_size, meta)
        VALUES (item->>'exchange', item->>'symbol', (item->>'tick_size')::numeric, item->'meta')
        ON CONFLICT (exchange, symbol) DO UPDATE SET tick_size = EXCLUDED.tick_size, meta = EXCLUDED.meta;
    END LOOP;
END $$;
"""

SCHEMA = (
    LEGACY_FUNCTION
    + """
CREATE TABLE w_key (id text PRIMARY KEY, writer int);
CREATE TABLE w_plain (id text);
CREATE TABLE w_tx (id text);
CREATE TABLE w_tx_total (k int PRIMARY KEY, n int NOT NULL);
INSERT INTO w_tx_total VALUES (1, 0);
CREATE TABLE w_copy (id text PRIMARY KEY, v int);
CREATE TABLE w_copyrec (id text, v int);
"""
)


@dataclass
class PgPath:
    """One write path: how to write a batch of ids and how to read the ids back."""

    name: str
    batch: int
    writers: int
    write: Callable[[PostgresClient, list[str]], Awaitable[object]]
    read_sql: str


async def _execute_key(pg: PostgresClient, ids: list[str]) -> object:
    return await pg.execute("INSERT INTO w_key VALUES ($1, 1) ON CONFLICT (id) DO NOTHING", ids[0], idempotent=True)


async def _execute_plain(pg: PostgresClient, ids: list[str]) -> object:
    return await pg.execute("INSERT INTO w_plain VALUES ($1)", ids[0])


async def _transaction(pg: PostgresClient, ids: list[str]) -> object:
    async def body(conn: asyncpg.Connection) -> None:
        await conn.execute("INSERT INTO w_tx VALUES ($1)", ids[0])
        await conn.execute("UPDATE w_tx_total SET n = n + 1 WHERE k = 1")

    return await pg.transaction(body, isolation="serializable")


async def _bulk_upsert(pg: PostgresClient, ids: list[str]) -> object:
    items = [{"symbol": i, "tick_size": "0.01", "meta": {"w": 1}} for i in ids]
    return await pg.bulk_upsert_instruments(items, "rel")


async def _copy_upsert(pg: PostgresClient, ids: list[str]) -> object:
    return await pg.copy_upsert("w_copy", [(i, 1) for i in ids], columns=["id", "v"], key_columns=["id"])


async def _copy_records(pg: PostgresClient, ids: list[str]) -> object:
    return await pg.copy_records("w_copyrec", [(i, 1) for i in ids], columns=["id", "v"])


PATHS = [
    PgPath("pg.execute_key", 1, 2, _execute_key, "SELECT id FROM w_key"),
    PgPath("pg.execute_plain", 1, 2, _execute_plain, "SELECT id FROM w_plain"),
    PgPath("pg.transaction", 1, 2, _transaction, "SELECT id FROM w_tx"),
    PgPath("pg.bulk_upsert_instruments", 5, 1, _bulk_upsert, "SELECT symbol FROM instruments"),
    PgPath("pg.copy_upsert", 20, 1, _copy_upsert, "SELECT id FROM w_copy"),
    PgPath("pg.copy_records", 20, 1, _copy_records, "SELECT id FROM w_copyrec"),
]


#: Error types a caller may see under infrastructure faults.
SDK_ERRORS = {
    "ServiceUnavailableError",
    "OutcomeUnknownError",
    "DeadlineExceededError",
    "CircuitOpenError",
    "PoolExhaustedError",
    "CancelledError",  # only where the test cancels calls
    "SerializationError",  # a conflict that outlasted max_attempts (the transaction was rolled back)
}


@dataclass
class Ctx:
    """What a nemesis may act on."""

    env: PgEnv
    proxy: FaultProxy
    pg: PostgresClient
    workload: Workload


# ------------------------------------------------------------------------------------------------------ nemeses


async def _lose_replies(ctx: Ctx) -> None:
    before = ctx.proxy.stats.replies_lost
    for _ in range(16):
        ctx.proxy.lose_next_reply()  # the next request reaches the server; its reply is dropped, connection reset
        await asyncio.sleep(0.12)
    ctx.proxy.pass_through()
    lost = ctx.proxy.stats.replies_lost - before
    count_fault("pg.reply_lost", lost)
    assert lost >= 5


async def _resets(ctx: Ctx) -> None:
    for _ in range(8):
        ctx.proxy.reset()
        count_fault("pg.connection_reset")
        await asyncio.sleep(random.uniform(0.02, 0.08))
        ctx.proxy.pass_through()
        await asyncio.sleep(0.2)


async def _latency(ctx: Ctx) -> None:
    for delay in (0.05, 0.3, 0.01, 0.6, 0.1):  # 0.6 s each way is past command_timeout (1 s) for a round trip
        ctx.proxy.latency(delay)
        count_fault("pg.latency")
        await asyncio.sleep(0.4)
    ctx.proxy.pass_through()


async def _blackhole(ctx: Ctx) -> None:
    for hold in (0.6, 2.4):  # shorter than the 2 s deadline (calls survive), then longer (deadline exceeded)
        ctx.proxy.blackhole()
        count_fault("pg.blackhole")
        await asyncio.sleep(hold)
        ctx.proxy.pass_through()
        await asyncio.sleep(0.4)


def _restart(mode: str) -> Callable[[Ctx], Awaitable[None]]:
    async def nemesis(ctx: Ctx) -> None:
        for _ in range(2):
            await asyncio.sleep(0.4)
            await asyncio.to_thread(ctx.env.server.restart, mode)
            count_fault(f"pg.restart_{mode}")
        await asyncio.sleep(0.4)

    return nemesis


async def _freeze(ctx: Ctx) -> None:
    server = ctx.env.server
    for hold in (0.6, 2.4):
        await asyncio.to_thread(server.freeze)
        count_fault("pg.freeze")
        try:
            await asyncio.sleep(hold)
        finally:
            await asyncio.to_thread(server.thaw)
        await asyncio.sleep(0.4)


async def _terminate_backends(ctx: Ctx) -> None:
    conn = await ctx.env.admin()
    try:
        for _ in range(40):  # backends mid-statement or mid-transaction (idle ones would just be reconnected)
            await asyncio.sleep(0.05)
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = $1 AND state <> 'idle'",
                ctx.env.app,
            )
            count_fault("pg.backend_terminated", killed)
    finally:
        await conn.close()


async def _cancel_calls(ctx: Ctx) -> None:
    for _ in range(100):
        await asyncio.sleep(random.uniform(0.005, 0.03))
        if ctx.workload.cancel_random():
            count_fault("pg.task_cancelled")


async def _exhaust_pool(ctx: Ctx) -> None:
    size = ctx.pg.settings.max_size
    started = asyncio.Event()
    held = 0

    async def hold(conn: asyncpg.Connection) -> None:
        nonlocal held
        held += 1
        if held == size:
            started.set()
        await asyncio.sleep(1.4)  # longer than acquire_timeout (1 s): waiting writers get PoolExhaustedError

    for _ in range(2):
        held = 0
        started.clear()
        holders = [asyncio.create_task(ctx.pg.run("hold", hold, True)) for _ in range(size)]
        count_fault("pg.pool_exhausted")
        await asyncio.gather(*holders)
        await asyncio.sleep(0.3)


NEMESES: dict[str, Callable[[Ctx], Awaitable[None]]] = {
    "reply_lost": _lose_replies,
    "connection_reset": _resets,
    "latency": _latency,
    "blackhole": _blackhole,
    "restart_fast": _restart("fast"),
    "restart_immediate": _restart("immediate"),
    "restart_kill": _restart("kill"),
    "freeze": _freeze,
    "backends_terminated": _terminate_backends,
    "task_cancelled": _cancel_calls,
    "pool_exhausted": _exhaust_pool,
}


@pytest.mark.parametrize("fault", list(NEMESES))
async def test_pg_writes_are_never_lost_duplicated_or_unexpected(pg_env: PgEnv, fault: str) -> None:
    admin = await pg_env.admin()
    try:
        await admin.execute(SCHEMA)
    finally:
        await admin.close()
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy)
    await pg.connect()
    histories = {p.name: History(p.name) for p in PATHS}
    workload = Workload()
    for path in PATHS:
        workload.add(
            histories[path.name], lambda ids, path=path: path.write(pg, ids), batch=path.batch, writers=path.writers
        )
    try:
        await run_for(0.3)  # warm up: every path writes before the fault
        await run_for(2.0, lambda: NEMESES[fault](Ctx(pg_env, proxy, pg, workload)))
        await pg_env.heal()
        await run_for(0.3)  # and after it
    finally:
        await workload.stop()
        await pg_env.close_all()  # leak checks; every backend of the client is gone before the read-back

    admin = await pg_env.admin()
    try:
        observed = {p.name: sql_ids(await admin.fetch(p.read_sql)) for p in PATHS}
        tx_total = await admin.fetchval("SELECT n FROM w_tx_total WHERE k = 1")
    finally:
        await admin.close()
    reports: list[Report] = [LEDGER.add(check(histories[p.name], observed[p.name])) for p in PATHS]
    summary = "\n".join(r.summary() for r in reports)
    for report in reports:
        assert report.ok > 0, f"{report.path} never succeeded:\n{summary}"
        report.assert_clean()
    assert tx_total == len(observed["pg.transaction"]), "a transaction was applied partly"
    # Under infrastructure faults a caller only ever sees the SDK's errors (all ConnectionErrors), a cancellation
    # it caused, or a conflict that outlasted the retries: never a raw driver error that reads like its own mistake.
    seen = {e for r in reports for e in r.errors}
    assert seen <= SDK_ERRORS, f"callers saw raw driver errors {seen - SDK_ERRORS}:\n{summary}"
    if fault == "pool_exhausted":
        assert any(r.errors["PoolExhaustedError"] for r in reports), summary

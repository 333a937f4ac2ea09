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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest

from trading_shared import PostgresClient

from . import faults
from .faults import Ctx, Nemesis
from .harness import PgEnv, Workload, run_for, sql_ids
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
    keyed: bool = False  # the table's key makes a duplicate unobservable: duplicated is not applicable


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
    PgPath("pg.execute_key", 1, 2, _execute_key, "SELECT id FROM w_key", keyed=True),
    PgPath("pg.execute_plain", 1, 2, _execute_plain, "SELECT id FROM w_plain"),
    PgPath("pg.transaction", 1, 2, _transaction, "SELECT id FROM w_tx"),
    PgPath("pg.bulk_upsert_instruments", 5, 1, _bulk_upsert, "SELECT symbol FROM instruments", keyed=True),
    PgPath("pg.copy_upsert", 20, 1, _copy_upsert, "SELECT id FROM w_copy", keyed=True),
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


# ------------------------------------------------------------------------------------------------------ nemeses
# The scripts both servers share (lost replies, resets, latency, blackhole, freeze, cancelled calls) are in faults.py.


#: path -> a fragment of the statement its backend shows in pg_stat_activity.query while it runs that path's write.
STATEMENT_OF = {
    "pg.execute_key": "w_key",
    "pg.execute_plain": "w_plain",
    "pg.transaction": "w_tx",
    "pg.bulk_upsert_instruments": "bulk_upsert_instruments",
    "pg.copy_upsert": "_ts_stage",
    "pg.copy_records": "w_copyrec",
}


async def _terminate_backends(ctx: Ctx) -> None:
    """Terminate the client's busy backends every 50 ms, 40 times; then, for a path the fault has not yet reached
    (by the evidence, :func:`faults.unreached`), terminate a backend while it runs that path's statement (polled
    every 5 ms, bounded: 3 s), so a path with one writer and fast statements is not left to chance."""
    conn = await ctx.env.admin()
    kill = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND state <> 'idle' AND query LIKE ANY($2::text[])"
    )
    try:
        for _ in range(40):
            await asyncio.sleep(0.05)
            ctx.count("backend_terminated", await conn.fetchval(kill, ctx.env.app, ["%"]))
        loop = asyncio.get_running_loop()
        until = loop.time() + 3.0
        while (missing := faults.unreached(ctx)) and loop.time() < until:
            patterns = [f"%{STATEMENT_OF[p]}%" for p in missing]
            for _ in range(10):
                await asyncio.sleep(0.005)
                ctx.count("backend_terminated", await conn.fetchval(kill, ctx.env.app, patterns))
    finally:
        await conn.close()


async def _exhaust_pool(ctx: Ctx) -> None:
    pg: PostgresClient = ctx.client
    size = pg.settings.max_size

    async def hold(conn: asyncpg.Connection) -> None:
        await asyncio.sleep(1.4)  # longer than acquire_timeout (1 s): waiting writers get PoolExhaustedError

    for _ in range(2):
        holders = [asyncio.create_task(pg.run("hold", hold, True)) for _ in range(size)]
        ctx.count("pool_exhausted")
        await asyncio.gather(*holders)
        await asyncio.sleep(0.3)


NEMESES: dict[str, Nemesis] = {
    **faults.SHARED,
    "restart_fast": faults.restart("fast"),
    "restart_immediate": faults.restart("immediate"),
    "restart_kill": faults.restart("kill"),
    "backends_terminated": _terminate_backends,
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
    workload = Workload(tracer=pg_env.otel.tracer_provider.get_tracer("reliability"))
    for path in PATHS:
        workload.add(
            histories[path.name], lambda ids, path=path: path.write(pg, ids), batch=path.batch, writers=path.writers
        )
    faults_before = sum(LEDGER.faults.values())
    try:
        await run_for(0.3)  # warm up: every path writes before the fault
        ctx = faults.Ctx("pg", pg_env, proxy, pg, workload, list(histories.values()))
        await run_for(2.0, lambda: NEMESES[fault](ctx))
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
    cut = faults.mark_hits(pg_env.otel.spans(), workload, proxy)
    reports: list[Report] = [LEDGER.add(check(histories[p.name], observed[p.name], keyed=p.keyed)) for p in PATHS]
    faults.verify(reports, workload, fault, sum(LEDGER.faults.values()) - faults_before, cut, SDK_ERRORS)
    assert tx_total == len(observed["pg.transaction"]), "a transaction was applied partly"
    if fault == "pool_exhausted":
        assert any(r.errors["PoolExhaustedError"] for r in reports), "\n".join(r.summary() for r in reports)

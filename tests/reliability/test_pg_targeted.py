"""Targeted PostgreSQL faults: a reply lost on a chosen statement (the COMMIT, a plain INSERT), deadlocks (40P01),
serialization failures (40001), and a conflict after a COMMIT whose reply was lost. Each checked with the history
checker; the proxy's lost reply proves the server applied the request."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from support.proxy import FaultProxy
from trading_shared import OutcomeUnknownError, PostgresClient, PostgresSettings, ServiceUnavailableError

from .harness import PgEnv, count_fault, pg_quiet, sql_ids
from .history import LEDGER, History, Outcome, check


async def _setup(env: PgEnv, sql: str) -> None:
    admin = await env.admin()
    try:
        await admin.execute(sql)
    finally:
        await admin.close()


async def _read(env: PgEnv, sql: str) -> list[str]:
    admin = await env.admin()
    try:
        return sql_ids(await admin.fetch(sql))
    finally:
        await admin.close()


def _arm(proxy: FaultProxy) -> None:
    proxy.lose_next_reply()
    count_fault("pg.reply_lost")


@pytest.mark.parametrize("idempotent", [False, True])
async def test_lost_commit_reply(pg_env: PgEnv, idempotent: bool) -> None:
    """COMMIT applied, reply lost: not idempotent -> OutcomeUnknownError (never re-run); idempotent -> re-run, once."""
    await _setup(pg_env, "CREATE TABLE t (id text PRIMARY KEY)")
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy, min_size=1, max_size=1)
    history = History("pg.transaction.lost_commit")
    runs = 0
    write_id = history.new_id()

    async def body(conn: asyncpg.Connection) -> None:
        nonlocal runs
        runs += 1
        sql = "INSERT INTO t VALUES ($1)" + (" ON CONFLICT (id) DO NOTHING" if idempotent else "")
        await conn.execute(sql, write_id)
        if runs == 1:
            _arm(proxy)  # the next chunk sent is the COMMIT

    await pg.connect()
    await history.call([write_id], lambda: pg.transaction(body, idempotent=idempotent))
    assert proxy.stats.replies_lost == 1
    (record,) = history.records
    if idempotent:
        assert record.outcome is Outcome.OK and runs == 2
    else:
        assert record.outcome is Outcome.INFO and record.error == "OutcomeUnknownError" and runs == 1
    await pg_env.close_all()
    report = LEDGER.add(check(history, await _read(pg_env, "SELECT id FROM t")))
    report.assert_clean()
    assert report.indeterminate_applied == (0 if idempotent else 1)  # the server did commit it


@pytest.mark.parametrize("idempotent", [False, True])
async def test_lost_insert_reply(pg_env: PgEnv, idempotent: bool) -> None:
    """A plain INSERT applied, reply lost: re-sent only when the caller said it is idempotent (then keyed)."""
    await _setup(pg_env, "CREATE TABLE t (id text PRIMARY KEY)")
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy, min_size=1, max_size=1)
    sql = "INSERT INTO t VALUES ($1)" + (" ON CONFLICT (id) DO NOTHING" if idempotent else "")
    history = History("pg.execute.lost_reply")
    for _ in range(5):
        # A lost reply kills the connection: first reconnect and prepare the statement with a write of its own, so
        # that the armed chunk is the Bind/Execute of the INSERT under test (not a handshake or a Parse).
        warm = history.new_ids(1)
        await history.call(warm, lambda warm=warm: pg.execute(sql, warm[0], idempotent=idempotent))
        await pg_quiet(pg)
        _arm(proxy)
        ids = history.new_ids(1)
        await history.call(ids, lambda ids=ids: pg.execute(sql, ids[0], idempotent=idempotent))
    assert proxy.stats.replies_lost == 5
    outcomes = history.outcomes()
    if idempotent:
        assert outcomes == {Outcome.OK: 10}
    else:
        assert outcomes == {Outcome.OK: 5, Outcome.INFO: 5}
    await pg_env.close_all()
    report = LEDGER.add(check(history, await _read(pg_env, "SELECT id FROM t")))
    report.assert_clean()
    assert report.indeterminate_applied == (0 if idempotent else 5)


async def test_deadlocks_rerun_the_losing_transaction(pg_env: PgEnv) -> None:
    """Pairs of transactions lock two rows in opposite orders: PostgreSQL aborts one (40P01), the SDK re-runs it."""
    await _setup(
        pg_env,
        "CREATE TABLE acct (k int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0), (2, 0);CREATE TABLE t (id text)",
    )
    pg = pg_env.client(max_size=4)
    history = History("pg.transaction.deadlock")
    runs = 0

    async def transfer(first: int, second: int, write_id: str, barrier: asyncio.Barrier) -> None:
        mine = 0

        async def body(conn: asyncpg.Connection) -> None:
            nonlocal runs, mine
            runs += 1
            mine += 1
            await conn.execute("SET LOCAL deadlock_timeout = '20ms'")
            await conn.execute("UPDATE acct SET n = n + 1 WHERE k = $1", first)
            if mine == 1:
                await asyncio.wait_for(barrier.wait(), 5.0)  # both hold their first lock: a deadlock follows
            await conn.execute("UPDATE acct SET n = n + 1 WHERE k = $1", second)
            await conn.execute("INSERT INTO t VALUES ($1)", write_id)

        await history.call([write_id], lambda: pg.transaction(body))

    for _ in range(3):
        barrier = asyncio.Barrier(2)
        a, b = history.new_ids(2)
        await asyncio.gather(transfer(1, 2, a, barrier), transfer(2, 1, b, barrier))
        count_fault("pg.deadlock")
    assert history.outcomes() == {Outcome.OK: 6}
    assert runs >= 9  # every pair deadlocked once: one of the two ran again
    await pg_env.close_all()
    report = LEDGER.add(check(history, await _read(pg_env, "SELECT id FROM t")))
    report.assert_clean()
    assert await _read(pg_env, "SELECT n FROM acct ORDER BY k") == ["6", "6"]


async def test_serialization_failures_rerun_whole_transactions(pg_env: PgEnv) -> None:
    """Eight serializable read-modify-write transactions on one row, all started together: 40001s are re-run and
    every increment lands exactly once."""
    await _setup(
        pg_env, "CREATE TABLE acct (k int PRIMARY KEY, n int); INSERT INTO acct VALUES (1, 0);CREATE TABLE t (id text)"
    )
    pg = pg_env.client(max_size=8, retry={"max_attempts": 20, "deadline": 10})
    history = History("pg.transaction.serialization")
    barrier = asyncio.Barrier(8)
    runs = 0

    async def one(write_id: str) -> None:
        async def body(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            n = await conn.fetchval("SELECT n FROM acct WHERE k = 1")
            if runs <= 8:
                await barrier.wait()  # the first runs all read the same snapshot
            await conn.execute("UPDATE acct SET n = $1 WHERE k = 1", n + 1)
            await conn.execute("INSERT INTO t VALUES ($1)", write_id)

        await history.call([write_id], lambda: pg.transaction(body, isolation="serializable"))

    await asyncio.gather(*(one(i) for i in history.new_ids(8)))
    count_fault("pg.serialization_failure", runs - 8)
    assert history.outcomes() == {Outcome.OK: 8}
    assert runs > 8
    await pg_env.close_all()
    report = LEDGER.add(check(history, await _read(pg_env, "SELECT id FROM t")))
    report.assert_clean()
    assert await _read(pg_env, "SELECT n FROM acct") == ["8"]


async def test_conflict_after_a_lost_commit_says_it_may_have_been_applied(pg_env: PgEnv) -> None:
    """An idempotent transaction commits but its reply is lost; the re-runs then fail on conflicts until the attempts
    run out. The caller must not get a plain conflict error (which says "rolled back, not applied"): the first run
    did commit. It gets a ServiceUnavailableError with may_have_been_applied=True."""
    await _setup(pg_env, "CREATE TABLE t (id text PRIMARY KEY)")
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy, min_size=1, max_size=1, retry={"max_attempts": 3})
    history = History("pg.transaction.conflict_after_lost_commit")
    write_id = history.new_id()
    runs = 0

    async def body(conn: asyncpg.Connection) -> None:
        nonlocal runs
        runs += 1
        await conn.execute("INSERT INTO t VALUES ($1) ON CONFLICT (id) DO NOTHING", write_id)
        if runs == 1:
            _arm(proxy)  # the COMMIT is applied, its reply lost
        else:
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$")

    await pg.connect()
    with pytest.raises(ServiceUnavailableError) as info:
        await pg.transaction(body, idempotent=True)
    history.record([write_id], info.value)
    assert info.value.may_have_been_applied is True
    assert not isinstance(info.value, OutcomeUnknownError)  # it was re-sent: allowed, the caller said idempotent
    assert isinstance(info.value.__cause__, asyncpg.SerializationError)
    assert runs == 3
    await pg_env.close_all()
    report = LEDGER.add(check(history, await _read(pg_env, "SELECT id FROM t")))
    report.assert_clean()
    assert report.indeterminate_applied == 1


async def test_a_listener_that_accepts_and_drops_is_transient_not_a_configuration_error(pg_env: PgEnv) -> None:
    """Like a load balancer or pooler whose backend is down: TCP accepted, then closed (FIN) during asyncpg's TLS
    negotiation. asyncpg raises a plain ConnectionError there, as it does for a TLS refusal; with TLS not required it
    must be retried and end as the SDK's ServiceUnavailableError, not surface as a caller error after one attempt."""
    accepted = 0

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        pg = PostgresClient(
            PostgresSettings(
                dsn=f"postgresql://postgres@127.0.0.1:{port}/postgres",
                application_name=pg_env.app,
                retry={"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 3},
            )
        )
        with pytest.raises(ServiceUnavailableError) as info:
            await pg.connect()
        await pg.close()
        count_fault("pg.accept_then_drop", accepted)
    finally:
        server.close()
        await server.wait_closed()
    assert info.value.may_have_been_applied is False
    assert info.value.attempts == 3
    assert accepted == 3

"""PostgresClient under real faults: restart, server down, breaker cycle, cancellation, conflicts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import pytest

from support.otel import Otel
from support.servers import PostgresServer
from trading_shared import (
    CircuitOpenError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PostgresClient,
    ServiceUnavailableError,
)
from trading_shared.telemetry import names


async def test_server_restart_mid_run_is_retried_and_the_calls_succeed(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer, otel: Otel
) -> None:
    restart_proof = {"max_attempts": 20, "initial_backoff": 0.05, "max_backoff": 0.3, "deadline": 10}
    async with make_pg(min_size=2, max_size=2, retry=restart_proof) as pg:
        done = asyncio.Event()
        results: list[int] = []

        async def worker(offset: int) -> None:
            i = offset
            while not done.is_set():  # queries are in flight when the server goes down
                results.append(await pg.fetchval("SELECT $1::int FROM pg_sleep(0.02)", i))
                i += 2

        workers = [asyncio.create_task(worker(n)) for n in (0, 1)]
        await asyncio.sleep(0.2)
        await asyncio.to_thread(pg_server.restart, "fast")
        await asyncio.sleep(0.2)
        done.set()
        await asyncio.gather(*workers)  # no call failed
    assert sum(v for _, v in otel.points(names.RETRIES)) >= 1
    assert pg.breaker.state.value == "closed"
    assert len(results) > 10


async def test_syntax_and_constraint_errors_are_not_retried(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    async with make_pg() as pg:
        await pg.execute("CREATE TABLE t (id int PRIMARY KEY)")
        await pg.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await pg.fetch("SELEC 1")
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute("INSERT INTO t VALUES (1)")
        assert pg.breaker.failure_count == 0
    assert otel.points(names.RETRIES) == []
    errors = {a.get(names.ERROR_TYPE) for a, _ in otel.points(names.OPERATION_DURATION)}
    assert {"42601", "23505"} <= errors


async def test_breaker_opens_fails_without_io_lets_one_trial_through_and_closes(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer, otel: Otel
) -> None:
    pg = make_pg(retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01, "deadline": 2},
                 breaker={"fail_max": 3, "reset_timeout": 0.5})  # fmt: skip
    await pg.connect()
    await asyncio.to_thread(pg_server.stop, "immediate")
    for _ in range(3):
        with pytest.raises(ServiceUnavailableError):
            await pg.fetchval("SELECT 1")
    assert pg.breaker.state.value == "open"

    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(CircuitOpenError):
            await pg.fetchval("SELECT 1")
    per_call = (time.perf_counter() - t0) / 100
    assert per_call < 0.02  # no I/O: well under a millisecond when idle; a connect attempt would take ~1 s

    await asyncio.to_thread(pg_server.start)
    await asyncio.sleep(0.55)
    trial_started = asyncio.Event()
    release_trial = asyncio.Event()

    async def slow_trial(conn: asyncpg.Connection) -> int:
        trial_started.set()
        await release_trial.wait()
        return int(await conn.fetchval("SELECT 1"))

    trial = asyncio.create_task(pg.run("trial", slow_trial, True))
    await trial_started.wait()
    assert pg.breaker.state.value == "half_open"
    for _ in range(5):  # only the one trial is let through
        with pytest.raises(CircuitOpenError):
            await pg.fetchval("SELECT 1")
    release_trial.set()
    assert await trial == 1
    assert pg.breaker.state.value == "closed"
    assert await pg.fetchval("SELECT 2") == 2
    await pg.close()
    states = [a[names.BREAKER_STATE_ATTR] for a, v in otel.points(names.BREAKER_TRANSITIONS) if v]
    assert sorted(states) == ["closed", "half_open", "open"]


async def test_cancellation_leaves_the_pool_clean(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg(max_size=2) as pg:
        tasks = [asyncio.create_task(pg.fetchval("SELECT pg_sleep(5)")) for _ in range(4)]
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert pg.breaker.failure_count == 0
        assert await pg.fetchval("SELECT 3") == 3
        pool = pg.pool
        assert pool is not None
        for _ in range(100):
            if pool.get_idle_size() == pool.get_size():
                break
            await asyncio.sleep(0.01)
        assert pool.get_idle_size() == pool.get_size()


async def test_transaction_is_rerun_whole_on_serialization_failure(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg(max_size=4) as pg:
        await pg.execute("CREATE TABLE acct (id int PRIMARY KEY, balance int)")
        await pg.execute("INSERT INTO acct VALUES (1, 0)")
        runs = 0
        barrier = asyncio.Barrier(2)

        async def increment(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            balance = await conn.fetchval("SELECT balance FROM acct WHERE id = 1")
            if runs <= 2:
                await barrier.wait()  # both first runs read the same snapshot
            await conn.execute("UPDATE acct SET balance = $1 WHERE id = 1", balance + 1)

        await asyncio.gather(
            pg.transaction(increment, isolation="serializable"),
            pg.transaction(increment, isolation="serializable"),
        )
        assert await pg.fetchval("SELECT balance FROM acct WHERE id = 1") == 2
        assert runs == 3


async def test_non_idempotent_write_cut_mid_flight_is_not_resent(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer
) -> None:
    async with make_pg() as pg:
        await pg.execute("CREATE TABLE log (id serial PRIMARY KEY, note text)")
        killer = asyncio.create_task(_terminate_backends_after(pg, 0.3))
        with pytest.raises(OutcomeUnknownError) as info:
            await pg.execute("INSERT INTO log (note) SELECT 'x' FROM pg_sleep(1)")
        await killer
        assert info.value.may_have_been_applied is True
        assert await pg.fetchval("SELECT count(*) FROM log") == 0  # the server rolled it back; sent once


async def _terminate_backends_after(pg: PostgresClient, delay: float) -> None:
    await asyncio.sleep(delay)
    await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'ts-test' AND pid <> pg_backend_pid() AND query LIKE 'INSERT INTO log%'"
    )


async def test_transaction_cut_before_commit_is_rerun(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg(max_size=3) as pg:
        await pg.execute("CREATE TABLE events (id text PRIMARY KEY)")
        runs = 0

        async def write(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            await conn.execute("INSERT INTO events VALUES ('e1')")
            if runs == 1:
                await pg.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
                await conn.execute("SELECT 1")  # fails: the backend is gone before COMMIT

        await pg.transaction(write)  # not idempotent, yet safe: nothing was committed
        assert runs == 2
        assert await pg.fetchval("SELECT count(*) FROM events") == 1


async def test_multi_statement_run_is_not_rerun_after_a_statement_was_applied(
    make_pg: Callable[..., PostgresClient],
) -> None:
    async with make_pg(max_size=3) as pg:
        await pg.execute("CREATE TABLE orders (id text)")
        runs = 0

        async def two_statements(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            await conn.execute("INSERT INTO orders VALUES ('order-1')")  # autocommitted
            await pg.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
            await conn.execute("SELECT 1")  # fails: the connection is gone

        with pytest.raises(OutcomeUnknownError):
            await pg.run("two_statements", two_statements, False)
        assert runs == 1
        assert await pg.fetchval("SELECT count(*) FROM orders") == 1


@pytest.mark.parametrize("kind", ["circuit_open", "unavailable", "deadline"])
async def test_another_clients_errors_inside_a_transaction_are_not_retried_nor_counted(
    make_pg: Callable[..., PostgresClient], otel: Otel, kind: str
) -> None:
    # ServiceUnavailableError is a builtin ConnectionError, DeadlineExceededError a TimeoutError: read as this
    # server's failure either would be retried and counted against this breaker.
    error_type = {"circuit_open": CircuitOpenError, "unavailable": ServiceUnavailableError}.get(
        kind, DeadlineExceededError
    )
    foreign = error_type("redis unavailable", operation="GET", attempts=1, may_have_been_applied=False)
    async with make_pg(breaker={"fail_max": 1, "reset_timeout": 5}) as pg:
        runs = 0

        async def uses_redis(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            raise foreign

        with pytest.raises(error_type) as info:
            await pg.transaction(uses_redis)
        assert info.value is foreign
        assert runs == 1
        assert pg.breaker.state.value == "closed"
    assert sum(v for _, v in otel.points(names.BREAKER_REJECTIONS)) == 0


async def test_a_caller_error_in_a_transaction_is_raised_as_is_once_and_rolled_back(
    make_pg: Callable[..., PostgresClient],
) -> None:
    async with make_pg(breaker={"fail_max": 1, "reset_timeout": 5}) as pg:
        await pg.execute("DROP TABLE IF EXISTS tx_caller; CREATE TABLE tx_caller (id int)")
        runs = 0

        async def bad(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            await conn.execute("INSERT INTO tx_caller VALUES (1)")
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await pg.transaction(bad, idempotent=True)
        assert runs == 1
        assert pg.breaker.state.value == "closed"
        assert await pg.fetchval("SELECT count(*) FROM tx_caller") == 0
        await pg.execute("DROP TABLE tx_caller")


async def test_transaction_deadline_holds_against_a_frozen_server(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer
) -> None:
    from trading_shared import DeadlineExceededError

    pg = make_pg(retry={"max_attempts": 3, "deadline": 1.0}, command_timeout=30.0)
    await pg.connect()
    try:

        async def slow(conn: asyncpg.Connection) -> None:
            await asyncio.to_thread(pg_server.freeze)
            await conn.execute("SELECT 1")

        t0 = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await pg.transaction(slow)
        assert time.monotonic() - t0 < 2.0
    finally:
        await asyncio.to_thread(pg_server.thaw)
        await pg.close(timeout=2)

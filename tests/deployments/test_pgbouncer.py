"""The PostgreSQL integration tests again, through PgBouncer in transaction-pooling mode.

Every test function of ``tests/postgres`` that reaches PostgreSQL through the ``pg_dsn`` / ``make_pg`` fixtures is
collected here a second time, with those fixtures overridden: ``pg_dsn`` names the same fresh database but through
a private PgBouncer (``pool_mode = transaction``, fewer server connections than the clients open, so statements
really are multiplexed), and every client is built with ``pooler="transaction"`` -- the setting the deployment
guide documents (no prepared-statement cache, no session reset query). ``POSTGRES_POOLER=transaction`` is also
set in the environment, as a deployed service would, so clients a test builds itself get it too.

Tests that talk to the server directly (``pg_server`` only) are not re-run: there is nothing to route. Tests that
cannot work under transaction pooling by nature are listed in :data:`EXCLUDED` with the reason; new tests added
to ``tests/postgres`` are picked up automatically.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg
import pytest
from pgbouncer_server import PgBouncer

from support.otel import Otel
from support.servers import PostgresServer
from trading_shared import CircuitOpenError, PostgresClient, PostgresSettings, ServiceUnavailableError
from trading_shared.postgres.classify import LoginRefusedError
from trading_shared.telemetry import names

POSTGRES_TESTS = Path(__file__).resolve().parents[1] / "postgres"
SUITE_MODULES = tuple(sorted(path.stem for path in POSTGRES_TESTS.glob("test_*.py")))
ROUTED_FIXTURES = {"make_pg", "pg_dsn"}

#: Tests of tests/postgres that transaction pooling cannot support, and why.
EXCLUDED: dict[str, str] = {
    "test_session_state_never_leaks_to_the_next_caller": (
        "session state (SET, session-level advisory locks) cannot be used under transaction pooling: the next "
        "transaction may run on another server connection, and with pooler='transaction' the client does not "
        "send the session reset query (it would run on whichever server connection PgBouncer picks)"
    ),
    "test_transaction_cut_before_commit_is_rerun": (
        "terminates conn.get_server_pid(): behind PgBouncer that is PgBouncer's cancel key, not a backend pid; "
        "re-done below with pg_backend_pid() taken inside the transaction"
    ),
    "test_multi_statement_run_is_not_rerun_after_a_statement_was_applied": (
        "terminates conn.get_server_pid(), PgBouncer's cancel key behind a pooler, so the client connection "
        "survives and nothing fails; the PartlyApplied rule itself is pooler-independent (tests/unit)"
    ),
    "test_breaker_opens_fails_without_io_lets_one_trial_through_and_closes": (
        "asserts that the first half-open trial after PostgreSQL is back succeeds: PgBouncer fails the first "
        "client of a pool whose last server login failed at once (check_fast_fail: 'server login has been "
        "failing') while it reconnects, so that trial fails and the breaker reopens for one more reset_timeout; "
        "re-done below with the bound that holds behind PgBouncer"
    ),
    "test_async_with_connects_and_closes": (
        "expects the server backends to go away with the client: PgBouncer keeps its server connections open "
        "for the next client by design"
    ),
}


def _postgres_tests() -> dict[str, Callable[..., Any]]:
    """Every test function of tests/postgres, imported through pytest's (assertion-rewriting) importer."""
    if str(POSTGRES_TESTS) not in sys.path:
        sys.path.insert(0, str(POSTGRES_TESTS))
    found: dict[str, Callable[..., Any]] = {}
    for module_name in SUITE_MODULES:
        module = importlib.import_module(module_name)
        if Path(module.__file__ or "").resolve().parent != POSTGRES_TESTS:
            raise ImportError(f"{module_name} did not come from {POSTGRES_TESTS}")
        for name, fn in vars(module).items():
            if name.startswith("test_") and inspect.isfunction(fn) and fn.__module__ == module.__name__:
                found[name] = fn
    return found


def _routed(fn: Callable[..., Any]) -> bool:
    return bool(ROUTED_FIXTURES & set(inspect.signature(fn).parameters))


def _load_fast_settings() -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("_postgres_suite_conftest", POSTGRES_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.FAST)


ALL_POSTGRES_TESTS = _postgres_tests()
SUITE = {name: fn for name, fn in ALL_POSTGRES_TESTS.items() if _routed(fn) and name not in EXCLUDED}
globals().update(SUITE)  # collected here, with this module's fixtures
FAST = _load_fast_settings()


# ---------------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pgbouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer (transaction pooling, 3 server connections per database) in front of the session's PostgreSQL."""
    # server_login_retry 0.1 s instead of the guide's 1 s keeps the outage test's recovery bound short: PgBouncer
    # refuses logins for server_login_retry after a failed one.
    bouncer = PgBouncer(pg_server.host, pg_server.port, default_pool_size=3, settings={"server_login_retry": "0.1"})
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.cleanup()


@pytest.fixture
def pg_dsn(pg_dsn: str, pgbouncer: PgBouncer) -> str:
    """The test's fresh database (created and dropped by the root fixture), reached through PgBouncer."""
    return pgbouncer.dsn(db=unquote(urlsplit(pg_dsn).path.lstrip("/")))


@pytest.fixture(autouse=True)
def _pooler_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """As a deployed service behind PgBouncer: clients a test builds itself (even in a subprocess) get the setting."""
    monkeypatch.setenv("POSTGRES_POOLER", "transaction")


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


@pytest.fixture
def make_pg(pg_dsn: str, otel: Otel) -> Callable[..., PostgresClient]:
    """tests/postgres' ``make_pg`` (same fast fault settings) through PgBouncer, with ``pooler="transaction"``."""

    def make(**overrides: Any) -> PostgresClient:
        values: dict[str, Any] = {"dsn": pg_dsn, **FAST, "pooler": "transaction", **overrides}
        return PostgresClient(PostgresSettings(**values), **otel.providers())

    return make


# ------------------------------------------------------------------------------------------- PgBouncer-only tests


def test_every_routed_postgres_test_runs_here_unless_excluded_with_a_reason() -> None:
    assert set(EXCLUDED) <= set(ALL_POSTGRES_TESTS), "stale exclusion"
    routed = {name for name, fn in ALL_POSTGRES_TESTS.items() if _routed(fn)}
    assert routed == set(SUITE) | set(EXCLUDED)
    assert len(SUITE) >= 20
    collected = {name for name, value in globals().items() if name in ALL_POSTGRES_TESTS}
    assert collected == set(SUITE)


async def test_transaction_cut_before_commit_is_rerun_behind_pgbouncer(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg(max_size=3) as pg:
        await pg.execute("CREATE TABLE events (id text PRIMARY KEY)")
        runs = 0

        async def write(conn: asyncpg.Connection) -> None:
            nonlocal runs
            runs += 1
            await conn.execute("INSERT INTO events VALUES ('e1')")
            if runs == 1:
                backend = await conn.fetchval("SELECT pg_backend_pid()")  # pinned for the whole transaction
                assert await pg.fetchval("SELECT pg_terminate_backend($1)", backend) is True
                await conn.execute("SELECT 1")  # fails: PgBouncer lost the server connection mid-transaction

        await pg.transaction(write)  # not idempotent, yet safe: nothing was committed
        assert runs == 2
        assert await pg.fetchval("SELECT count(*) FROM events") == 1


async def test_breaker_opens_during_an_outage_and_closes_after_it_behind_pgbouncer(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer, otel: Otel
) -> None:
    """PgBouncer stays up while PostgreSQL is down: the breaker still opens, and closes soon after PostgreSQL returns.

    Bound after PostgreSQL is back: two reset timeouts (a trial may hit PgBouncer's fast-fail, see EXCLUDED) plus
    PgBouncer's server_login_retry, plus slack for a loaded machine.
    """
    reset_timeout = 0.5
    pg = make_pg(retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01, "deadline": 2},
                 breaker={"fail_max": 3, "reset_timeout": reset_timeout})  # fmt: skip
    async with pg:
        await asyncio.to_thread(pg_server.stop, "immediate")
        while pg.breaker.state.value != "open":
            with pytest.raises(ServiceUnavailableError) as info:
                await pg.fetchval("SELECT 1")
            assert not isinstance(info.value, CircuitOpenError)
        with pytest.raises(CircuitOpenError):
            await pg.fetchval("SELECT 1")
        await asyncio.to_thread(pg_server.start)
        back = time.monotonic()
        while True:
            try:
                assert await pg.fetchval("SELECT 2") == 2
                break
            except ServiceUnavailableError:
                assert time.monotonic() - back < 2 * reset_timeout + 0.1 + 3.0  # + slack for a loaded machine
                await asyncio.sleep(0.05)
        assert pg.breaker.state.value == "closed"
    errors = {a.get(names.ERROR_TYPE) for a, _ in otel.points(names.OPERATION_DURATION)}
    assert "08003" in errors or "08P01" in errors  # PgBouncer's errors are connection-class SQLSTATEs


async def test_a_login_pgbouncer_refuses_is_retried_and_counts_against_the_breaker(
    pg_server: PostgresServer, pg_dsn: str
) -> None:
    """PgBouncer refuses logins with SQLSTATE 08P01 (here: max_client_conn). Only a start-up message was sent, so
    it is an outage to retry and count, not the caller's malformed request that an 08P01 answering a statement is."""
    db = unquote(urlsplit(pg_dsn).path.lstrip("/"))
    with PgBouncer(pg_server.host, pg_server.port, settings={"max_client_conn": "1"}) as tiny:
        holder = await asyncpg.connect(tiny.dsn(db=db), statement_cache_size=0)
        settings = PostgresSettings(
            dsn=tiny.dsn(db=db),
            pooler="transaction",
            retry={"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 5},
            breaker={"fail_max": 1, "reset_timeout": 0.2},
        )
        pg = PostgresClient(settings)
        try:
            with pytest.raises(ServiceUnavailableError) as info:
                await pg.connect()
            assert info.value.attempts == 3
            assert info.value.may_have_been_applied is False
            assert isinstance(info.value.__cause__, LoginRefusedError)
            assert isinstance(info.value.__cause__.__cause__, asyncpg.ProtocolViolationError)
            assert pg.breaker.state.value == "open"
            await holder.close()
            await asyncio.sleep(0.25)
            assert await pg.fetchval("SELECT 1") == 1  # the slot is free again: the trial succeeds
            assert pg.breaker.state.value == "closed"
        finally:
            await pg.close()
            if not holder.is_closed():
                await holder.close()


async def test_statements_multiplex_over_fewer_server_connections_without_prepared_statement_errors(
    make_pg: Callable[..., PostgresClient], pgbouncer: PgBouncer, pg_server: PostgresServer, pg_dsn: str
) -> None:
    """8 client connections share PgBouncer's 3 server connections: no statement fails for lack of a prepare."""
    async with make_pg(min_size=8, max_size=8, acquire_timeout=30) as pg:
        await pg.execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")

        async def work(i: int) -> None:
            await pg.execute("INSERT INTO kv VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = $2", i % 50, str(i))
            assert await pg.fetchval("SELECT $1::int + $2::int", i, 1) == i + 1
            assert (await pg.fetchrow("SELECT $1::text AS t, $2::bigint AS b", str(i), i))["b"] == i  # type: ignore[index]
            await pg.fetch("SELECT k, v FROM kv WHERE k = ANY($1::int[])", [i % 50, (i + 1) % 50])

        await asyncio.gather(*(work(i) for i in range(300)))
        assert await pg.fetchval("SELECT count(*) FROM kv") == 50
    db = unquote(urlsplit(pg_dsn).path.lstrip("/"))
    direct = await asyncpg.connect(pg_server.dsn(db=db))
    try:
        servers = await direct.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db
        )
    finally:
        await direct.close()
    assert servers <= 3  # the multiplexing really happened


async def test_named_prepared_statements_break_under_transaction_pooling(
    pg_dsn: str, pgbouncer: PgBouncer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the setting exists: asyncpg's default statement cache fails once statements are multiplexed."""
    monkeypatch.delenv("POSTGRES_POOLER")
    settings = PostgresSettings(dsn=pg_dsn, min_size=6, max_size=6, retry={"max_attempts": 1})
    assert settings.statement_cache_size > 0
    failures: list[BaseException] = []
    async with PostgresClient(settings) as pg:

        async def work(i: int) -> None:
            try:
                await pg.fetchval(f"SELECT $1::int + {i % 7}", i)
            except asyncpg.PostgresError as exc:
                failures.append(exc)

        await asyncio.gather(*(work(i) for i in range(300)))
    assert failures, "expected prepared-statement errors without pooler='transaction'"
    assert {getattr(f, "sqlstate", None) for f in failures} <= {"26000", "42P05"}


async def test_release_sends_no_session_reset_query(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer, pg_dsn: str
) -> None:
    db = unquote(urlsplit(pg_dsn).path.lstrip("/"))
    async with make_pg(min_size=1, max_size=1) as pg:
        assert await pg.fetchval("SELECT 1 /* marker */") == 1
        await asyncio.sleep(0.1)  # the release runs in the background
        direct = await asyncpg.connect(pg_server.dsn(db=db))
        try:
            queries = await direct.fetch(
                "SELECT query FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", db
            )
        finally:
            await direct.close()
    assert [r["query"] for r in queries] == ["SELECT 1 /* marker */"]


def test_a_statement_cache_behind_a_transaction_pooler_is_rejected() -> None:
    with pytest.raises(ValueError, match="statement_cache_size"):
        PostgresSettings(pooler="transaction", statement_cache_size=100)
    assert PostgresSettings(pooler="transaction").effective_statement_cache_size() == 0
    assert PostgresSettings(pooler="none").effective_statement_cache_size() == 100

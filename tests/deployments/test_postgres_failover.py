"""PostgreSQL primary/standby failover with a multi-host DSN, and read routing to a replica.

Each test starts its own primary and a hot standby made with ``pg_basebackup -R`` (streaming replication), on free
127.0.0.1 ports in temp dirs. The client's DSN lists both hosts with ``target_session_attrs=read-write``.

Failover tests keep four writers busy while the primary goes away and the standby is promoted. Every write has a
unique id and its outcome is recorded as the SDK reported it: acknowledged, definitely not applied
(``may_have_been_applied`` false) or unknown. Afterwards, on the new primary: no acknowledged write is missing,
no write is there twice, and no write the SDK called "not applied" is there. The client must reach the new
primary within :data:`FAILOVER_BOUND` seconds of the promotion.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from postgres_replication import PrimaryServer, StandbyServer

from support.otel import Otel
from trading_shared import CircuitOpenError, PostgresClient, PostgresSettings, ServiceUnavailableError
from trading_shared.postgres.classify import PostgresErrors, ReadOnlyServerError
from trading_shared.postgres.hosts import connect_each_host, split_hosts
from trading_shared.resilience import Fault
from trading_shared.telemetry import names

#: Seconds from the standby's promotion to the first acknowledged write on it (measured: well under 1 s).
FAILOVER_BOUND = 10.0

SCHEMA = """
CREATE TABLE ledger (id text PRIMARY KEY, writer int NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE events (id text NOT NULL);   -- one per ledger row, same transaction: checks atomicity
CREATE TABLE plain (id text NOT NULL);    -- non-idempotent inserts, never re-sent after they may have landed
"""

CLIENT = {
    "min_size": 2,
    "max_size": 4,
    "connect_timeout": 2.0,
    "command_timeout": 5.0,
    "acquire_timeout": 5.0,
    "application_name": "ts-failover",
    "retry": {"max_attempts": 100, "initial_backoff": 0.05, "max_backoff": 0.5, "jitter": 0.05, "deadline": 10},
    "breaker": {"fail_max": 5, "reset_timeout": 1.0},
}


@dataclass
class Pair:
    """A primary and its streaming standby."""

    primary: PrimaryServer
    standby: StandbyServer

    def dsn(self, attrs: str = "read-write") -> str:
        """Both hosts, primary first, with ``target_session_attrs``."""
        hosts = f"{self.primary.host}:{self.primary.port},{self.standby.host}:{self.standby.port}"
        return f"postgresql://postgres@{hosts}/postgres?target_session_attrs={attrs}"


@pytest.fixture
def pair() -> Iterator[Pair]:
    primary = PrimaryServer()
    standby = StandbyServer(primary)
    try:
        primary.start()
        primary.psql(SCHEMA)
        standby.start()
        primary.wait_for_standbys(1)
        yield Pair(primary, standby)
    finally:
        standby.cleanup()
        primary.cleanup()


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


# ------------------------------------------------------------------------------------------------ the write book


@dataclass
class Book:
    """Every write's id and the outcome the SDK reported for it."""

    acked: dict[str, float] = field(default_factory=dict)  # id -> when the write was started
    failed: set[str] = field(default_factory=set)  # the SDK said: certainly not applied
    unknown: set[str] = field(default_factory=set)  # the SDK said: may have been applied
    errors: list[BaseException] = field(default_factory=list)

    def acked_since(self, t: float) -> bool:
        return any(started >= t for started in self.acked.values())

    def __repr__(self) -> str:
        errors = sorted({type(e).__name__ for e in self.errors})
        return (
            f"<Book acked={len(self.acked)} not_applied={len(self.failed)} unknown={len(self.unknown)} "
            f"unexpected={len(self.errors)} {errors}>"
        )


async def _keyed_write(conn: asyncpg.Connection, key: str, writer: int) -> None:
    inserted = await conn.fetchval(
        "INSERT INTO ledger (id, writer) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING RETURNING true", key, writer
    )
    if inserted:
        await conn.execute("INSERT INTO events (id) VALUES ($1)", key)


async def _writer(pg: PostgresClient, writer: int, stop: asyncio.Event, book: Book, keyed: bool) -> None:
    i = 0
    while not stop.is_set():
        key = f"{'k' if keyed else 'p'}{writer}-{i}"
        i += 1
        started = time.monotonic()
        try:
            if keyed:
                await pg.transaction(lambda c, k=key: _keyed_write(c, k, writer), idempotent=True)  # type: ignore[misc]
            else:
                await pg.execute("INSERT INTO plain (id) VALUES ($1)", key)
        except ServiceUnavailableError as exc:
            (book.unknown if exc.may_have_been_applied else book.failed).add(key)
            await asyncio.sleep(0.02)
        except Exception as exc:  # a caller error here would be a misclassified failover fault
            book.errors.append(exc)
            await asyncio.sleep(0.02)
        else:
            book.acked[key] = started
        await asyncio.sleep(0.002)


@dataclass
class Timings:
    fault: float
    promoted: float
    first_ack: float

    def __str__(self) -> str:
        return (
            f"fault->promoted {self.promoted - self.fault:.2f} s, promoted->first write acknowledged by the new "
            f"primary {self.first_ack - self.promoted:.2f} s, fault->first ack {self.first_ack - self.fault:.2f} s"
        )


async def _fail_over(pg: PostgresClient, pair: Pair, fault: Callable[[], None], book: Book) -> Timings:
    """Run 2 keyed and 2 plain writers, apply ``fault``, promote the standby, wait for a write on it."""
    stop = asyncio.Event()
    writers = [asyncio.create_task(_writer(pg, n, stop, book, keyed=n < 2)) for n in range(4)]
    try:
        await asyncio.sleep(0.5)
        assert len(book.acked) > 10, "writes were not flowing before the fault"
        t_fault = time.monotonic()
        await asyncio.to_thread(fault)
        await asyncio.to_thread(pair.standby.promote)
        t_promoted = time.monotonic()
        while not book.acked_since(t_promoted):
            assert time.monotonic() - t_promoted < FAILOVER_BOUND, f"no write reached the new primary: {book}"
            await asyncio.sleep(0.01)
        t_first = time.monotonic()
        await asyncio.sleep(0.3)  # more writes on the new primary
    finally:
        stop.set()
        await asyncio.gather(*writers)
    return Timings(t_fault, t_promoted, t_first)


async def _audit(pair: Pair, book: Book) -> dict[str, Any]:
    """Check the book against the new primary; return the figures."""
    conn = await asyncpg.connect(pair.standby.dsn())
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
        ledger = {r["id"] for r in await conn.fetch("SELECT id FROM ledger")}
        plain = [r["id"] for r in await conn.fetch("SELECT id FROM plain")]
        events = [r["id"] for r in await conn.fetch("SELECT id FROM events")]
    finally:
        await conn.close()
    present = ledger | set(plain)
    figures = {
        "acknowledged": len(book.acked),
        "not_applied": len(book.failed),
        "unknown": len(book.unknown),
        "unknown_present": len(book.unknown & present),
        "lost": sorted(set(book.acked) - present),
        # Only ``plain`` can show a re-sent write twice. ``events`` is written only when the keyed ledger insert
        # inserted, so a re-run cannot add a second event: it is checked for atomicity (one event per ledger row,
        # none without one), not for duplicates.
        "duplicated": sorted({k for k in plain if plain.count(k) > 1}),
        "said_not_applied_but_present": sorted(book.failed & present),
        "events_without_ledger": sorted(set(events) - ledger),
        "ledger_without_event": sorted(ledger - set(events)),
    }
    assert not book.errors, f"unexpected errors: {book!r}\n" + "".join(traceback.format_exception(book.errors[0]))
    assert figures["lost"] == [], figures
    assert figures["duplicated"] == [], figures
    assert figures["said_not_applied_but_present"] == [], figures
    assert figures["events_without_ledger"] == [], figures
    assert figures["ledger_without_event"] == [], figures
    return figures


def _client(dsn: str, otel: Otel | None = None, **overrides: Any) -> PostgresClient:
    providers = otel.providers() if otel is not None else {}
    return PostgresClient(PostgresSettings(dsn=dsn, **{**CLIENT, **overrides}), **providers)


# ------------------------------------------------------------------------------------------------------ failovers


async def test_switchover_fast_stop_then_promote_loses_and_duplicates_nothing(pair: Pair, otel: Otel) -> None:
    """Clean switchover: ``pg_ctl stop -m fast`` sends all WAL to the standby first, so async replication is enough.
    Telemetry follows: spans name the new primary once the client has moved to it."""
    book = Book()
    async with _client(pair.dsn(), otel) as pg:
        assert await pg.fetchval("SELECT 1") == 1
        timings = await _fail_over(pg, pair, lambda: pair.primary.stop("fast"), book)
        assert await pg.fetchval("SELECT inet_server_port()") == pair.standby.port
    ports = [(s.attributes or {})[names.SERVER_PORT] for s in otel.method_spans("fetchval")]
    assert ports[0] == pair.primary.port and ports[-1] == pair.standby.port, ports
    figures = await _audit(pair, book)
    print(f"\nswitchover: {timings}; {figures}")


async def test_crash_with_synchronous_replication_loses_and_duplicates_nothing(pair: Pair) -> None:
    """The primary is SIGKILLed. Acknowledged commits survive only because the standby confirmed them first
    (``synchronous_standby_names``): with asynchronous replication a crash can lose acknowledged writes."""
    await asyncio.to_thread(pair.primary.configure, synchronous_standby_names="'*'")
    await asyncio.to_thread(pair.primary.wait_for_standbys, 1, True)
    book = Book()
    async with _client(pair.dsn()) as pg:
        timings = await _fail_over(pg, pair, pair.primary.kill, book)
    figures = await _audit(pair, book)
    print(f"\ncrash: {timings}; {figures}")


async def test_hung_primary_is_skipped_host_by_host(pair: Pair) -> None:
    """The primary hangs (SIGSTOP: the kernel still accepts TCP, nothing answers), like a host gone from the network.
    asyncpg alone spends its connect timeout on the first host of the list and never tries the second; the client
    gives each host its own connect_timeout, so it reaches the promoted standby. Synchronous replication keeps the
    acknowledged writes (the frozen primary streams nothing more)."""
    await asyncio.to_thread(pair.primary.configure, synchronous_standby_names="'*'")
    await asyncio.to_thread(pair.primary.wait_for_standbys, 1, True)
    book = Book()
    async with _client(pair.dsn(), connect_timeout=1.0, command_timeout=1.5) as pg:
        timings = await _fail_over(pg, pair, pair.primary.freeze, book)
        assert await pg.fetchval("SELECT inet_server_port()") == pair.standby.port
    figures = await _audit(pair, book)
    print(f"\nhung primary: {timings}; {figures}")


async def test_fenced_old_primary_read_only_errors_expire_the_pool_and_writes_move_on(
    pair: Pair, otel: Otel
) -> None:
    """The old primary stays up but refuses writes (fenced with default_transaction_read_only, like a demoted
    writer). Pooled connections to it get 25006: the SDK must treat that as not applied, expire the pool and
    reconnect to the new primary, instead of raising a caller error until the connections age out.

    The fence is made safe before the promotion, as an operator must: a reload reaches each session only after its
    next command, so a session may still run one read-write transaction. Wait until the client's sessions have
    left the old primary (the SDK expires each one at its first 25006) and the standby has replayed everything.
    """

    def fence() -> None:
        pair.primary.configure(default_transaction_read_only="on")
        sessions = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ts-failover'"
        deadline = time.monotonic() + FAILOVER_BOUND
        while pair.primary.psql(sessions) != "0":
            assert time.monotonic() < deadline, "the client kept its sessions on the read-only server"
            time.sleep(0.02)
        pair.primary.wait_replayed_by(pair.standby)

    book = Book()
    async with _client(pair.dsn(), otel) as pg:
        timings = await _fail_over(pg, pair, fence, book)
        assert await pg.fetchval("SELECT inet_server_port()") == pair.standby.port
        assert pg.breaker.state.value == "closed"
    figures = await _audit(pair, book)
    print(f"\nfenced: {timings}; {figures}")
    retried = {a.get(names.ERROR_TYPE) for a, _ in otel.points(names.RETRIES)}
    assert "25006" in retried, retried  # the read-only refusals were retried, not raised


async def test_a_read_only_transaction_of_the_caller_stays_a_caller_error(pair: Pair) -> None:
    async with _client(pair.dsn()) as pg:
        pool = pg.pool

        async def write(conn: asyncpg.Connection) -> None:
            await conn.execute("INSERT INTO plain (id) VALUES ('x')")

        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pg.transaction(write, readonly=True)
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pg.execute("BEGIN READ ONLY; INSERT INTO plain (id) VALUES ('y'); COMMIT")
        assert pg.breaker.failure_count == 0
        assert pg.pool is pool
        assert await pg.fetchval("SELECT count(*) FROM plain") == 0


def test_multi_host_dsns_are_split_per_host_keeping_credentials_and_parameters() -> None:
    dsn = "postgresql://u:p%40ss@h1:5432,[::1]:5433,h3/db?target_session_attrs=read-write&sslmode=disable"
    assert split_hosts(dsn) == [
        "postgresql://u:p%40ss@h1:5432/db?target_session_attrs=read-write&sslmode=disable",
        "postgresql://u:p%40ss@[::1]:5433/db?target_session_attrs=read-write&sslmode=disable",
        "postgresql://u:p%40ss@h3/db?target_session_attrs=read-write&sslmode=disable",
    ]
    assert split_hosts("postgresql://u@h1:5432/db") == ["postgresql://u@h1:5432/db"]


async def test_after_promotion_prefer_standby_falls_back_to_the_host_that_answered(pair: Pair) -> None:
    await asyncio.to_thread(pair.primary.stop, "fast")
    await asyncio.to_thread(pair.standby.promote)
    conn = await connect_each_host(pair.dsn("prefer-standby"), timeout=2)
    try:
        assert await conn.fetchval("SELECT inet_server_port()") == pair.standby.port
    finally:
        await conn.close()


async def test_read_write_target_never_falls_back_to_a_standby_in_recovery(pair: Pair) -> None:
    """The primary is down and the standby not yet promoted: no host is read-write, so connecting must fail (and
    the pipeline retries until the promotion) rather than hand out a connection to the standby."""
    await asyncio.to_thread(pair.primary.stop, "fast")
    with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched):
        await connect_each_host(pair.dsn("read-write"), timeout=2)
    with pytest.raises(asyncpg.exceptions.TargetServerAttributeNotMatched):
        await connect_each_host(pair.dsn("primary"), timeout=2)
    conn = await connect_each_host(pair.dsn("standby"), timeout=2)
    try:
        assert await conn.fetchval("SELECT pg_is_in_recovery()") is True
    finally:
        await conn.close()


def test_read_only_server_and_unmatched_targets_are_classified_as_unavailable() -> None:
    errors = PostgresErrors()
    assert errors.classify(ReadOnlyServerError("standby")) is Fault.UNAVAILABLE
    assert errors.describe(ReadOnlyServerError("standby")) == ("25006", "25006")
    assert errors.classify(asyncpg.ReadOnlySQLTransactionError("read-only transaction")) is Fault.CALLER
    unmatched = asyncpg.exceptions.TargetServerAttributeNotMatched("no host is read-write")
    assert errors.classify(unmatched) is Fault.INDETERMINATE  # raised while connecting: not sent, retried


# -------------------------------------------------------------------------------------------------- read replicas


def _routing_client(pair: Pair, otel: Otel, **overrides: Any) -> PostgresClient:
    replica = f"postgresql://postgres@{pair.standby.host}:{pair.standby.port}/postgres"
    overrides.setdefault("replica_dsn", replica)
    fast = {"retry": {"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 2},
            "breaker": {"fail_max": 3, "reset_timeout": 30}}  # fmt: skip
    return _client(pair.dsn(), otel, **{**fast, **overrides})


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_replica_reads_go_to_the_standby_through_their_own_pool(pair: Pair, otel: Otel) -> None:
    # The replica DSN lists the primary FIRST: prefer-standby must still pick the standby.
    async with _routing_client(pair, otel, replica_dsn=pair.dsn("prefer-standby")) as pg:
        assert pg.replica is not None
        assert await pg.fetchval("SELECT pg_is_in_recovery()") is False
        assert await pg.fetchval("SELECT pg_is_in_recovery()", replica=True) is True
        await pg.execute("INSERT INTO plain (id) VALUES ('r1')")

        async def replicated() -> bool:
            return bool(await pg.fetchval("SELECT count(*) FROM plain WHERE id = 'r1'", replica=True))

        await _eventually(replicated)
        row = await pg.fetchrow("SELECT inet_server_port() AS port", replica=True)
        assert row is not None and row["port"] == pair.standby.port
        rows = await pg.fetch("SELECT id FROM plain", replica=True)
        assert [r["id"] for r in rows] == ["r1"]
        assert pg.replica.pool is not None and pg.replica.pool is not pg.pool
        assert pg.replica.breaker is not pg.breaker
    spans = otel.method_spans("fetchval")
    replica_spans = [s for s in spans if (s.attributes or {}).get(names.POOL_NAME) == "postgres-replica"]
    # Spans name the host that answered (the standby), not the first host of the replica DSN (the primary).
    assert replica_spans and all((s.attributes or {})[names.SERVER_PORT] == pair.standby.port for s in replica_spans)


async def test_writes_sent_to_the_replica_are_caller_errors_and_never_fall_back(pair: Pair, otel: Otel) -> None:
    async with _routing_client(pair, otel) as pg:
        assert pg.replica is not None
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pg.fetchval("INSERT INTO plain (id) VALUES ('no') RETURNING id", replica=True)
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await pg.replica.execute("INSERT INTO plain (id) VALUES ('no')")
        assert pg.replica.breaker.failure_count == 0
        assert await pg.fetchval("SELECT count(*) FROM plain") == 0  # nothing reached the primary


def _rejections(otel: Otel, pool: str) -> int:
    return sum(n for a, n in otel.points(names.BREAKER_REJECTIONS) if a[names.POOL_NAME] == pool)


async def test_a_dead_replica_leaves_the_primary_breaker_closed(pair: Pair, otel: Otel) -> None:
    async with _routing_client(pair, otel) as pg:
        assert pg.replica is not None
        assert await pg.fetchval("SELECT 1", replica=True) == 1
        await asyncio.to_thread(pair.standby.stop, "immediate")
        for _ in range(5):  # the replica fails, its breaker opens; every read is served by the primary
            assert await pg.fetchval("SELECT pg_is_in_recovery()", replica=True) is False
        assert pg.replica.breaker.state.value == "open"
        assert pg.breaker.state.value == "closed"
        assert pg.breaker.failure_count == 0
        rejected = _rejections(otel, "postgres-replica")
        assert await pg.fetchval("SELECT 2", replica=True) == 2  # open replica breaker: straight to the primary
        assert _rejections(otel, "postgres-replica") == rejected + 1  # rejected without I/O, then the primary
        await pg.execute("INSERT INTO plain (id) VALUES ('w')")

    async with _routing_client(pair, otel, replica_fallback=False) as strict:
        for _ in range(3):
            with pytest.raises(ServiceUnavailableError):
                await strict.fetchval("SELECT 1", replica=True)
        with pytest.raises(CircuitOpenError):
            await strict.fetchval("SELECT 1", replica=True)
        assert strict.breaker.state.value == "closed"
        assert await strict.fetchval("SELECT 3") == 3
    transitions = otel.points(names.BREAKER_TRANSITIONS)
    states = {(a[names.POOL_NAME], a[names.BREAKER_STATE_ATTR]) for a, n in transitions if n}
    assert states == {("postgres-replica", "open")}


async def test_a_dead_primary_leaves_the_replica_serving(pair: Pair, otel: Otel) -> None:
    async with _routing_client(pair, otel) as pg:
        assert pg.replica is not None
        await pg.execute("INSERT INTO plain (id) VALUES ('before')")
        await asyncio.to_thread(pair.primary.stop, "fast")
        for _ in range(3):
            with pytest.raises(ServiceUnavailableError) as info:
                await pg.execute("INSERT INTO plain (id) VALUES ('during')")
            assert not isinstance(info.value, CircuitOpenError)
        assert pg.breaker.state.value == "open"
        assert await pg.fetchval("SELECT count(*) FROM plain WHERE id = 'before'", replica=True) == 1
        assert pg.replica.breaker.state.value == "closed"
        assert pg.replica.breaker.failure_count == 0


async def test_connect_on_demand_and_replica_fallback_share_one_deadline(pair: Pair, otel: Otel) -> None:
    """Both servers hang. The first read connects on demand to the replica (its retries use most of the deadline),
    then falls back to the primary, which connects on demand too: all of it within one ``retry.deadline``, where
    each inner call used to get a whole deadline of its own (measured 3.4 s here before)."""
    pg = _routing_client(pair, otel, connect_timeout=0.7, retry={"max_attempts": 2, "initial_backoff": 0.01,
                         "max_backoff": 0.02, "deadline": 2})  # fmt: skip
    await asyncio.to_thread(pair.standby.freeze)
    await asyncio.to_thread(pair.primary.freeze)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await pg.fetchval("SELECT 1", replica=True)
        took = time.monotonic() - started
        assert pg.replica is not None and pg.replica.breaker.failure_count == 1  # its retries ran their course
        assert pg.breaker.failure_count == 0  # cut by what the replica left: no verdict on the primary
    finally:
        await asyncio.to_thread(pair.primary.thaw)
        await asyncio.to_thread(pair.standby.thaw)
        await pg.close()
    assert took < 2.0 + 0.2, f"{took:.2f} s"

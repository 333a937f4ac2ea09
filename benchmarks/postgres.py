"""PostgreSQL variants: fetchval / fetchrow by key (one at a time, concurrent) and the bulk instrument upsert paths."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import stamina
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from pydantic import SecretStr
from redress import AsyncPolicy, AsyncRetry, CircuitBreaker, sqlstate_classifier
from redress.contrib.otel import otel_hooks
from redress.strategies import decorrelated_jitter

from trading_shared import PostgresClient, PostgresSettings

from .harness import BulkCase, BulkVariant, LatencyCase, Variant
from .otel import Otel

KEYS = 10_000
POOL_MAX = 5  # PostgresSettings' default max_size, for both sides
COMMAND_TIMEOUT = 10.0  # PostgresSettings' default, for both sides
STATEMENT_CACHE = 100

FETCHVAL_SQL = "SELECT px FROM bench_kv WHERE id = $1"
FETCHROW_SQL = "SELECT id, sym, px, qty, ts FROM bench_kv WHERE id = $1"

SCHEMA = """
DROP TABLE IF EXISTS bench_kv;
CREATE TABLE bench_kv (id int PRIMARY KEY, sym text NOT NULL, px float8 NOT NULL, qty int NOT NULL,
                       ts timestamptz NOT NULL DEFAULT now());
INSERT INTO bench_kv (id, sym, px, qty) SELECT g, 'SYM' || g, g * 0.5, g % 100 FROM generate_series(1, 10000) g;
DROP TABLE IF EXISTS instruments;
CREATE TABLE instruments (
    exchange text NOT NULL, symbol text NOT NULL, tick_size numeric, meta jsonb,
    PRIMARY KEY (exchange, symbol)
);
CREATE OR REPLACE FUNCTION bulk_upsert_instruments(items jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE item jsonb;
BEGIN
    FOREACH item IN ARRAY items LOOP
        INSERT INTO instruments (exchange, symbol, tick_size, meta)
        VALUES (item->>'exchange', item->>'symbol', (item->>'tick_size')::numeric, item->'meta')
        ON CONFLICT (exchange, symbol) DO UPDATE SET tick_size = EXCLUDED.tick_size, meta = EXCLUDED.meta;
    END LOOP;
END $$;
ANALYZE;
"""

# The same upsert as the legacy function, as one set-based statement over parallel arrays.
UNNEST_SQL = """
INSERT INTO instruments (exchange, symbol, tick_size, meta)
SELECT $1, u.symbol, u.tick_size, u.meta
FROM unnest($2::text[], $3::numeric[], $4::jsonb[]) AS u(symbol, tick_size, meta)
ON CONFLICT (exchange, symbol) DO UPDATE SET tick_size = EXCLUDED.tick_size, meta = EXCLUDED.meta
"""
INSTRUMENT_COLUMNS = ["exchange", "symbol", "tick_size", "meta"]
STAGE_CREATE = "CREATE TEMP TABLE bench_stage (LIKE instruments INCLUDING DEFAULTS) ON COMMIT DROP"
STAGE_MERGE = (
    "INSERT INTO instruments (exchange, symbol, tick_size, meta) SELECT exchange, symbol, tick_size, meta "
    "FROM bench_stage ON CONFLICT (exchange, symbol) DO UPDATE SET tick_size = EXCLUDED.tick_size, meta = EXCLUDED.meta"
)
EXCHANGE = "bench"


async def raw_pool(dsn: str, name: str) -> asyncpg.Pool:
    """A plain asyncpg pool with the SDK's defaults (sizes, command timeout, statement cache).

    asyncpg's own codecs: json/jsonb travel as ``str``, so the hand-written bulk paths call ``json.dumps``
    themselves (inside the timed region, as the SDK's codec does).
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=1,
        max_size=POOL_MAX,
        command_timeout=COMMAND_TIMEOUT,
        statement_cache_size=STATEMENT_CACHE,
        server_settings={"application_name": name},
    )


def sdk_settings(dsn: str, name: str) -> PostgresSettings:
    return PostgresSettings(
        dsn=SecretStr(dsn),
        name=name,
        min_size=1,
        max_size=POOL_MAX,
        command_timeout=COMMAND_TIMEOUT,
        statement_cache_size=STATEMENT_CACHE,
        application_name=name,
    )


def _key(i: int) -> int:
    return i % KEYS + 1


@dataclass
class PostgresBench:
    """Pools and clients for one event loop; :meth:`close` releases them."""

    dsn: str
    otel: Otel
    raw: asyncpg.Pool | None = None
    sdk_otel: PostgresClient | None = None
    sdk_plain: PostgresClient | None = None

    async def open(self) -> None:
        admin = await asyncpg.connect(self.dsn)
        try:
            await admin.execute(SCHEMA)
        finally:
            await admin.close()
        self.raw = await raw_pool(self.dsn, "bench-raw")
        self.sdk_otel = await PostgresClient(
            sdk_settings(self.dsn, "bench-sdk-otel"), **self.otel.providers()
        ).connect()
        self.sdk_plain = await PostgresClient(sdk_settings(self.dsn, "bench-sdk")).connect()

    async def close(self) -> None:
        for client in (self.sdk_otel, self.sdk_plain):
            if client is not None:
                await client.close()
        if self.raw is not None:
            await self.raw.close()

    async def verify_no_session_leak(self, calls: int = 600) -> str:
        """Check that the SDK's background release never hands session state to the next caller.

        Half the calls leave state behind on their connection (a session GUC, an advisory lock, a LISTEN, a
        ``search_path``); the other half, interleaved with them on the same pool (one at a time, then from 32 tasks),
        look for any of it. Raises AssertionError on a leak; returns a one-line summary.
        """
        pg = self.sdk_plain
        assert pg is not None

        async def dirty(conn: asyncpg.Connection, i: int) -> None:
            await conn.execute("SELECT set_config('bench.leak', 'dirty', false)")
            await conn.execute("SET search_path TO pg_catalog")
            await conn.execute("LISTEN bench_leak")
            await conn.fetchval("SELECT pg_advisory_lock($1)", 10_000 + i)

        probe = (
            "SELECT coalesce(current_setting('bench.leak', true), '') AS guc, current_setting('search_path') AS path, "
            "(SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS locks, "
            "(SELECT count(*) FROM pg_listening_channels()) AS listens"
        )
        leaks: list[str] = []

        async def one(i: int) -> None:
            if i % 2 == 0:
                await pg.run("bench_dirty", lambda c: dirty(c, i), False)
                return
            row = await pg.fetchrow(probe)
            assert row is not None
            if row["guc"] or row["path"] != '"$user", public' or row["locks"] or row["listens"]:
                leaks.append(repr(dict(row)))

        for i in range(calls // 2):
            await one(i)
        sem = asyncio.Semaphore(32)

        async def bounded(i: int) -> None:
            async with sem:
                await one(i)

        await asyncio.gather(*(bounded(i) for i in range(calls // 2, calls)))
        assert not leaks, f"session state leaked to the next caller: {leaks[:3]}"
        return (
            f"verified: {calls} SDK calls, half leaving a GUC, search_path, LISTEN and an advisory lock on their "
            f"connection, half checking for them (sequential, then 32 tasks, pool of {POOL_MAX}): no leak"
        )

    # -- latency cases ---------------------------------------------------------------------------------------------
    def latency_variants(self, method: str, sql: str) -> list[Variant]:
        """raw, raw+contrib, SDK (OTel SDK / none), SELECT 1 before each op, redress, stamina."""
        pool, sdk_otel, sdk_plain = self.raw, self.sdk_otel, self.sdk_plain
        assert pool is not None
        assert sdk_otel is not None
        assert sdk_plain is not None
        otel = self.otel
        raw_call = getattr(pool, method)
        sdk_otel_call = getattr(sdk_otel, method)
        sdk_plain_call = getattr(sdk_plain, method)

        async def raw(i: int) -> Any:
            return await raw_call(sql, _key(i))

        async def sdk_o(i: int) -> Any:
            return await sdk_otel_call(sql, _key(i))

        async def sdk_p(i: int) -> Any:
            return await sdk_plain_call(sql, _key(i))

        async def health_checked(i: int) -> Any:
            # The replaced client: a round trip to check the connection before every operation.
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
                return await getattr(conn, method)(sql, _key(i))

        instrumentor = AsyncPGInstrumentor()  # type: ignore[no-untyped-call]

        async def instrument() -> None:
            instrumentor.instrument(tracer_provider=otel.tracer_provider)

        async def uninstrument() -> None:
            instrumentor.uninstrument()
            otel.flush()

        async def flush() -> None:
            otel.flush()

        policy = AsyncPolicy(
            retry=AsyncRetry(
                classifier=sqlstate_classifier,
                strategy=decorrelated_jitter(max_s=2.0),
                deadline_s=10.0,
                max_attempts=5,
            ),
            circuit_breaker=CircuitBreaker(failure_threshold=5, window_s=60.0, recovery_timeout_s=10.0),
        )
        hooks = otel_hooks(
            tracer=otel.tracer_provider.get_tracer("redress"),
            meter=otel.meter_provider.get_meter("redress"),
        )

        async def redress_op(i: int) -> Any:
            return await policy.call(lambda: raw_call(sql, _key(i)), operation=method, **hooks)

        @stamina.retry(
            on=(asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError),
            attempts=5,
            timeout=10.0,
            wait_initial=0.1,
            wait_max=2.0,
            wait_jitter=0.1,
        )
        async def stamina_op(i: int) -> Any:
            return await raw_call(sql, _key(i))

        return [
            Variant("raw", f"asyncpg pool.{method}", raw),
            Variant("contrib", "asyncpg + otel-instrumentation-asyncpg", raw, before=instrument, after=uninstrument),
            Variant("sdk_otel", "SDK, OTel SDK (spans+metrics)", sdk_o, after=flush),
            Variant("sdk", "SDK, no OTel SDK", sdk_p),
            Variant("healthcheck", "replaced: SELECT 1 before each op", health_checked),
            Variant("redress", "redress (retry+breaker+otel hooks)", redress_op, after=flush),
            Variant("stamina", "stamina (retry, instrumented)", stamina_op),
        ]

    def latency_cases(self, ops: int, concurrency: int) -> list[LatencyCase]:
        cases = []
        for method, sql in (("fetchval", FETCHVAL_SQL), ("fetchrow", FETCHROW_SQL)):
            for conc, n in ((1, ops), (concurrency, ops * 2)):
                label = "one at a time" if conc == 1 else f"{conc} tasks"
                cases.append(
                    LatencyCase("postgres", f"{method} by key, {label}", conc, n, self.latency_variants(method, sql))
                )
        return cases

    # -- bulk --------------------------------------------------------------------------------------------------------
    def bulk_cases(self, rows: int, modes: tuple[str, ...]) -> list[BulkCase]:
        pool, sdk = self.raw, self.sdk_otel
        assert pool is not None
        assert sdk is not None
        rng = random.Random(7)
        items: list[dict[str, Any]] = [
            {
                "symbol": f"S{i:06d}-USD",
                "tick_size": str(Decimal(rng.choice(("0.01", "0.05", "0.001", "0.5")))),
                "meta": {"kind": "spot", "base": f"S{i:06d}", "quote": "USD", "lot": 0.001, "active": True},
            }
            for i in range(rows)
        ]

        def tuples() -> list[tuple[Any, ...]]:  # for the SDK: its codec encodes jsonb
            return [(EXCHANGE, d["symbol"], Decimal(d["tick_size"]), d["meta"]) for d in items]

        def raw_tuples() -> list[tuple[Any, ...]]:  # for plain asyncpg: jsonb as text
            dumps = json.dumps
            return [(EXCHANGE, d["symbol"], Decimal(d["tick_size"]), dumps(d["meta"])) for d in items]

        def arrays(encode: bool) -> tuple[list[str], list[Decimal], list[Any]]:
            dumps = json.dumps
            return (
                [d["symbol"] for d in items],
                [Decimal(d["tick_size"]) for d in items],
                [dumps(d["meta"]) for d in items] if encode else [d["meta"] for d in items],
            )

        async def copy_staging() -> int:
            records = raw_tuples()
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(STAGE_CREATE)
                await conn.copy_records_to_table("bench_stage", records=records, columns=INSTRUMENT_COLUMNS)
                status: str = await conn.execute(STAGE_MERGE)
            return int(status.rsplit(" ", 1)[-1])

        async def sdk_copy_upsert() -> int:
            return await sdk.copy_upsert(
                "instruments", tuples(), columns=INSTRUMENT_COLUMNS, key_columns=["exchange", "symbol"]
            )

        async def sdk_legacy() -> int:
            return await sdk.bulk_upsert_instruments(items, EXCHANGE)

        async def raw_legacy() -> int:
            dumps = json.dumps
            payload = [dumps({**d, "exchange": EXCHANGE}) for d in items]
            await pool.execute("SELECT bulk_upsert_instruments($1::jsonb[])", payload)
            return len(payload)

        async def raw_unnest() -> int:
            status: str = await pool.execute(UNNEST_SQL, EXCHANGE, *arrays(True))
            return int(status.rsplit(" ", 1)[-1])

        async def sdk_unnest() -> int:
            return await sdk.execute(UNNEST_SQL, EXCHANGE, *arrays(False), idempotent=True)

        async def truncate() -> None:
            await pool.execute("TRUNCATE instruments")

        async def populate() -> None:
            # Every path upserts the same keys: after any run the table holds exactly these rows. VACUUM clears the
            # previous run's dead tuples so each update run starts from the same state; fill the table if needed.
            if await pool.fetchval("SELECT count(*) FROM instruments WHERE exchange = $1", EXCHANGE) != rows:
                await pool.execute("TRUNCATE instruments")
                await pool.copy_records_to_table("instruments", records=raw_tuples(), columns=INSTRUMENT_COLUMNS)
            await pool.execute("VACUUM ANALYZE instruments")

        async def flush() -> None:
            self.otel.flush()

        cases = []
        for mode in modes:
            prepare = truncate if mode == "insert" else populate
            what = "into an empty table" if mode == "insert" else "over existing rows (all updates)"
            variants = [
                BulkVariant("copy", "COPY into staging + INSERT ON CONFLICT (asyncpg)", copy_staging, prepare),
                BulkVariant("sdk_copy", "SDK copy_upsert (COPY into staging)", sdk_copy_upsert, prepare, flush),
                BulkVariant("sdk_legacy", "SDK bulk_upsert_instruments (jsonb[] fn)", sdk_legacy, prepare, flush),
                BulkVariant("raw_legacy", "jsonb[] function (asyncpg)", raw_legacy, prepare),
                BulkVariant("unnest", "INSERT .. SELECT unnest(arrays) (asyncpg)", raw_unnest, prepare),
                BulkVariant("sdk_unnest", "SDK execute(unnest upsert, idempotent)", sdk_unnest, prepare, flush),
            ]
            cases.append(BulkCase("bulk", f"upsert {rows:,} instruments {what}", variants, baseline="copy"))
        return cases


def summary_cache_memory(statements: int = 11_000) -> str:
    """Fill one client's query-summary caches with ``statements`` distinct statements (the bench's own fetchrow
    shape, one table name each) and report what they hold, measured with tracemalloc. No I/O; spans and metrics
    attributes are built as a traced client builds them."""
    import tracemalloc

    from opentelemetry.sdk.trace import TracerProvider

    from trading_shared.postgres.query_telemetry import PostgresTelemetry

    telemetry = PostgresTelemetry(
        query_text=True, summary_cap=200, pool_name="bench", namespace="bench", address="127.0.0.1", port=5432,
        tracer_provider=TracerProvider(),
    )  # fmt: skip
    texts = [f"SELECT k, a, b, c, d FROM bench_kv_{i} WHERE k = $1" for i in range(statements)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text in texts:
            op = telemetry.statement("fetchrow", text)
            telemetry.attributes(op)  # the span and metric attribute dicts, as the first call builds them
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return (
        f"query-summary caches after {statements:,} distinct fetchrow statements: "
        f"{len(telemetry._summaries):,} summaries kept, {held / 1e6:.2f} MB (tracemalloc)"
    )

"""PostgresClient operations on real PostgreSQL: statements, JSON, the legacy bulk upsert, the COPY paths."""

from __future__ import annotations

import copy
from collections.abc import Callable

import asyncpg
import pytest

from trading_shared import PostgresClient

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


async def test_execute_returns_affected_rows_and_fetch_helpers(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        assert await pg.execute("CREATE TABLE t (id int PRIMARY KEY, v text)") == 0
        assert await pg.execute("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 5) g") == 5
        assert await pg.execute("UPDATE t SET v = $1 WHERE id > $2", "y", 2) == 3
        await pg.executemany("INSERT INTO t VALUES ($1, $2)", [(10, "a"), (11, "b")])
        rows = await pg.fetch("SELECT id FROM t ORDER BY id")
        assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 10, 11]
        row = await pg.fetchrow("SELECT v FROM t WHERE id = $1", 11)
        assert row is not None
        assert row["v"] == "b"
        assert await pg.fetchrow("SELECT v FROM t WHERE id = -1") is None
        assert await pg.fetchval("SELECT count(*) FROM t") == 7
        assert await pg.execute("DELETE FROM t") == 7


async def test_json_and_jsonb_round_trip_as_python_objects(make_pg: Callable[..., PostgresClient]) -> None:
    doc = {"bid": 1.5, "levels": [1, 2], "venue": "x\u00e9", "nested": {"ok": True}}
    async with make_pg() as pg:
        assert await pg.fetchval("SELECT $1::jsonb", doc) == doc
        assert await pg.fetchval("SELECT $1::json", doc) == doc
        assert await pg.fetchval("SELECT '[1, {\"a\": null}]'::jsonb") == [1, {"a": None}]


async def test_bulk_upsert_instruments_calls_the_legacy_function_without_mutating_input(
    make_pg: Callable[..., PostgresClient],
) -> None:
    instruments = [
        {"symbol": "BTC-USD", "tick_size": "0.01", "meta": {"kind": "spot"}},
        {"symbol": "ETH-USD", "tick_size": "0.05", "meta": {"kind": "spot"}},
    ]
    before = copy.deepcopy(instruments)
    ids = [id(d) for d in instruments]
    async with make_pg() as pg:
        await pg.execute(LEGACY_FUNCTION)
        assert await pg.bulk_upsert_instruments(instruments, "coinbase") == 2
        assert instruments == before
        assert [id(d) for d in instruments] == ids
        assert all("exchange" not in d for d in instruments)
        instruments[0]["tick_size"] = "0.5"  # the caller's own change, then an upsert
        assert await pg.bulk_upsert_instruments(instruments, "coinbase") == 2
        rows = await pg.fetch("SELECT exchange, symbol, tick_size::text, meta FROM instruments ORDER BY symbol")
        assert [tuple(r) for r in rows] == [
            ("coinbase", "BTC-USD", "0.5", {"kind": "spot"}),
            ("coinbase", "ETH-USD", "0.05", {"kind": "spot"}),
        ]
        assert await pg.bulk_upsert_instruments([], "coinbase") == 0


async def test_copy_upsert_inserts_then_updates_by_key(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        await pg.execute("CREATE TABLE px (venue text, symbol text, price numeric, PRIMARY KEY (venue, symbol))")
        rows = [("x", f"S{i}", i) for i in range(1000)]
        cols, keys = ["venue", "symbol", "price"], ["venue", "symbol"]
        assert await pg.copy_upsert("px", rows, columns=cols, key_columns=keys) == 1000
        again = [("x", f"S{i}", i * 10) for i in range(500, 1500)]
        assert await pg.copy_upsert("px", again, columns=cols, key_columns=keys) == 1000
        assert await pg.fetchval("SELECT count(*) FROM px") == 1500
        assert await pg.fetchval("SELECT price FROM px WHERE symbol = 'S700'") == 7000
        assert await pg.fetchval("SELECT price FROM px WHERE symbol = 'S10'") == 10
        # the staging table never outlives its transaction
        assert await pg.fetchval("SELECT count(*) FROM pg_class WHERE relname = '_ts_stage'") == 0


async def test_copy_records_and_identifier_quoting(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        await pg.execute('CREATE TABLE "odd ""name""" (id int, note text)')
        rows = [(1, "a'; DROP TABLE x; --"), (2, None)]
        assert await pg.copy_records('odd "name"', rows, columns=["id", "note"]) == 2
        assert await pg.fetchval('SELECT note FROM "odd ""name""" WHERE id = 1') == "a'; DROP TABLE x; --"
        with pytest.raises(ValueError, match="NUL"):
            await pg.copy_upsert("a\x00b", [(1,)], columns=["id"], key_columns=["id"])


async def test_reads_are_idempotent_writes_are_not_unless_said(make_pg: Callable[..., PostgresClient]) -> None:
    from trading_shared.postgres.transactions import idempotent as _idempotent

    pg = make_pg()

    def idempotent(query: str, given: bool | None) -> bool:
        return _idempotent(pg._telemetry.statement("fetch", query), query, given)

    assert idempotent("SELECT * FROM t", None) is True
    assert idempotent("  -- comment\n WITH x AS (SELECT 1) SELECT * FROM x", None) is True
    assert idempotent("INSERT INTO t VALUES (1) RETURNING id", None) is False
    assert idempotent("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", None) is False
    assert idempotent("SELECT nextval('s')", None) is False
    assert idempotent("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING", True) is True
    assert idempotent("SELECT * FROM t", None) is True  # the cached answer, read from the operation
    assert pg._telemetry.statement("fetch", "SELECT nextval('s')").readonly is False


async def test_session_state_never_leaks_to_the_next_caller(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg(min_size=1, max_size=1) as pg:
        await pg.execute("SET search_path TO pg_catalog")
        await pg.fetchval("SELECT pg_advisory_lock(42)")
        assert await pg.fetchval("SHOW search_path") == '"$user", public'
        held = await pg.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert held == 0


async def test_caller_errors_keep_the_driver_type(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        with pytest.raises(asyncpg.UndefinedTableError):
            await pg.fetch("SELECT * FROM missing_table")
        with pytest.raises(asyncpg.DataError):
            await pg.fetchval("SELECT $1::int", "not a number")

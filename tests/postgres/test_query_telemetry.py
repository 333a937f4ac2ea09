"""Query-level PostgreSQL telemetry on a real server: spans named by db.query.summary, attributes per method
(batches, COPY, the bulk paths), db.query.text on and off, caller-named operations, the metric's summary cap, and no
parameter value or SQL literal anywhere in telemetry."""

from __future__ import annotations

import asyncio
import pickle
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from support.otel import Otel
from support.servers import PostgresServer
from trading_shared import CircuitOpenError, PostgresClient, ServiceUnavailableError
from trading_shared.telemetry import names
from trading_shared.telemetry.query_summary import OVERFLOW

SCHEMA = """
CREATE TABLE ohlc (ts int PRIMARY KEY, px text);
CREATE TABLE instruments (
    exchange text NOT NULL, symbol text NOT NULL, tick_size numeric, meta jsonb, PRIMARY KEY (exchange, symbol)
);
CREATE FUNCTION bulk_upsert_instruments(items jsonb[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE item jsonb;
BEGIN
    FOREACH item IN ARRAY items LOOP
        INSERT INTO instruments (exchange, symbol) VALUES (item->>'exchange', item->>'symbol')
        ON CONFLICT (exchange, symbol) DO NOTHING;
    END LOOP;
END $$;
"""
PARAM = "param-value-7c41d9"
LITERAL = "literal-value-3e8a05"


def _attrs(otel: Otel, summary: str) -> dict[str, Any]:
    found = [s for s in otel.spans() if s.name == summary]
    assert len(found) == 1, (summary, sorted({s.name for s in otel.spans()}))
    (span,) = found
    return dict(span.attributes or {})


def _summaries(otel: Otel) -> dict[str, str]:
    """db.query.summary -> db.operation.name of every duration point."""
    return {
        a[names.DB_QUERY_SUMMARY]: a[names.DB_OPERATION_NAME]
        for a, _ in otel.points(names.OPERATION_DURATION)
        if names.DB_QUERY_SUMMARY in a
    }


async def test_every_method_names_its_span_by_the_statement(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    async with make_pg() as pg:
        await pg.execute(SCHEMA)
        otel.spans_exporter.clear()
        await pg.execute("INSERT INTO ohlc VALUES ($1, $2)", 1, "a")
        await pg.fetch("SELECT * FROM ohlc WHERE ts > $1", 0)
        await pg.fetchrow("SELECT o.px FROM ohlc o JOIN instruments i ON true WHERE ts = $1", 1)
        await pg.fetchval("SELECT count(*) FROM public.ohlc")
        await pg.executemany("INSERT INTO ohlc VALUES ($1, $2)", [(2, "b"), (3, "c"), (4, "d")])
        await pg.executemany("UPDATE ohlc SET px = $2 WHERE ts = $1", [(2, "bb")])
        await pg.copy_records("ohlc", [(10, "x"), (11, "y")], columns=["ts", "px"], schema="public")
        await pg.copy_upsert("ohlc", [(10, "x2"), (12, "z")], columns=["ts", "px"], key_columns=["ts"])
        await pg.bulk_upsert_instruments([{"symbol": "BTC-USD"}, {"symbol": "ETH-USD"}], "coinbase")
        assert await pg.run("count rows", lambda c: c.fetchval("SELECT count(*) FROM ohlc"), True) == 7
        await pg.transaction(lambda c: c.execute("DELETE FROM ohlc WHERE ts = 12"))

    insert = _attrs(otel, "INSERT ohlc")
    assert insert[names.DB_OPERATION_NAME] == "INSERT"
    assert insert[names.DB_COLLECTION_NAME] == "ohlc"
    assert insert[names.METHOD] == "execute"
    assert insert[names.DB_QUERY_TEXT] == "INSERT INTO ohlc VALUES ($1, $2)"
    assert names.DB_OPERATION_BATCH_SIZE not in insert
    assert _attrs(otel, "SELECT ohlc")[names.METHOD] == "fetch"
    join = _attrs(otel, "SELECT ohlc instruments")
    assert (join[names.DB_OPERATION_NAME], join[names.METHOD]) == ("SELECT", "fetchrow")
    assert names.DB_COLLECTION_NAME not in join  # two tables: no single collection
    assert _attrs(otel, "SELECT public.ohlc")[names.DB_COLLECTION_NAME] == "public.ohlc"

    batch = _attrs(otel, "BATCH INSERT ohlc")  # executemany of 3 tuples: a batch of 3 INSERTs
    assert batch[names.DB_OPERATION_NAME] == "BATCH INSERT"
    assert batch[names.DB_OPERATION_BATCH_SIZE] == 3
    assert batch[names.DB_COLLECTION_NAME] == "ohlc"
    assert batch[names.DB_QUERY_TEXT] == "INSERT INTO ohlc VALUES ($1, $2)"
    single = _attrs(otel, "UPDATE ohlc")  # one tuple: a single operation, not a batch
    assert (single[names.DB_OPERATION_NAME], single[names.METHOD]) == ("UPDATE", "executemany")
    assert names.DB_OPERATION_BATCH_SIZE not in single

    copy = _attrs(otel, "COPY public.ohlc")  # many rows, one COPY: not a batch
    assert (copy[names.DB_OPERATION_NAME], copy[names.DB_COLLECTION_NAME]) == ("COPY", "public.ohlc")
    assert copy[names.METHOD] == "copy_records"
    assert names.DB_OPERATION_BATCH_SIZE not in copy and names.DB_QUERY_TEXT not in copy
    upsert = _attrs(otel, "CREATE _ts_stage COPY _ts_stage INSERT ohlc SELECT _ts_stage")  # its three statements
    assert upsert[names.DB_OPERATION_NAME] == "BATCH"
    assert upsert[names.DB_OPERATION_BATCH_SIZE] == 3
    assert upsert[names.METHOD] == "copy_upsert"
    assert upsert[names.DB_QUERY_TEXT].count("; ") == 2
    assert names.DB_COLLECTION_NAME not in upsert
    legacy = _attrs(otel, "SELECT bulk_upsert_instruments")
    assert legacy[names.DB_OPERATION_NAME] == "bulk_upsert_instruments"
    assert legacy[names.DB_STORED_PROCEDURE_NAME] == "bulk_upsert_instruments"
    assert legacy[names.DB_QUERY_TEXT] == "SELECT bulk_upsert_instruments($1::jsonb[])"
    run = _attrs(otel, "count rows")
    assert (run[names.DB_OPERATION_NAME], run[names.METHOD]) == ("count rows", "run")
    assert _attrs(otel, "transaction")[names.DB_OPERATION_NAME] == "transaction"

    assert _summaries(otel) == {
        "CREATE ohlc CREATE instruments CREATE bulk_upsert_instruments": "BATCH",
        "INSERT ohlc": "INSERT",
        "SELECT ohlc": "SELECT",
        "SELECT ohlc instruments": "SELECT",
        "SELECT public.ohlc": "SELECT",
        "BATCH INSERT ohlc": "BATCH INSERT",
        "UPDATE ohlc": "UPDATE",
        "COPY public.ohlc": "COPY",
        "CREATE _ts_stage COPY _ts_stage INSERT ohlc SELECT _ts_stage": "BATCH",
        "SELECT bulk_upsert_instruments": "bulk_upsert_instruments",
        "count rows": "count rows",
        "transaction": "transaction",
    }
    assert [v for _, v in otel.points(names.QUERY_SUMMARY_OVERFLOW)] == [0]  # exported at 0 from the start


async def test_query_text_can_be_switched_off(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    async with make_pg(query_text=False) as pg:
        await pg.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", "x")
    attrs = _attrs(otel, "SELECT pg_class")
    assert names.DB_QUERY_TEXT not in attrs
    assert attrs[names.DB_QUERY_SUMMARY] == "SELECT pg_class"  # the summary stays
    assert "relname" not in otel.everything_as_text()


async def test_a_caller_names_generated_sql_explicitly(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    columns = ", ".join(f"c{i}" for i in range(3))
    async with make_pg() as pg:
        await pg.execute(f"CREATE TABLE wide ({', '.join(f'c{i} int' for i in range(3))})")
        await pg.execute(f"INSERT INTO wide ({columns}) VALUES (1, 2, 3)", summary="store wide row")
        await pg.fetch(f"SELECT {columns} FROM wide", summary="load wide rows")
        await pg.fetchrow(f"SELECT {columns} FROM wide", summary="load wide rows")
        await pg.executemany("INSERT INTO wide (c0) VALUES ($1)", [(1,), (2,)], summary="store c0")
        await pg.transaction(lambda c: c.execute("DELETE FROM wide WHERE c0 = 2"), summary="prune wide")
        with pytest.warns(DeprecationWarning, match="summary"):
            await pg.transaction(lambda c: c.execute("SELECT 1"), operation="old name")
    load = [s for s in otel.spans() if s.name == "load wide rows"]
    assert [dict(s.attributes or {})[names.METHOD] for s in load] == ["fetch", "fetchrow"]
    attrs = dict(load[0].attributes or {})
    assert attrs[names.DB_QUERY_SUMMARY] == "load wide rows"
    assert attrs[names.DB_OPERATION_NAME] == "SELECT"  # still read from the SQL
    assert attrs[names.DB_QUERY_TEXT] == "SELECT c0, c1, c2 FROM wide"
    assert _attrs(otel, "store wide row")[names.DB_QUERY_TEXT] == "INSERT INTO wide (c0, c1, c2) VALUES (?, ?, ?)"
    assert _attrs(otel, "store c0")[names.DB_OPERATION_BATCH_SIZE] == 2  # a caller's name is used as given
    points = _summaries(otel)
    assert points["load wide rows"] == "SELECT"
    assert points["prune wide"] == "prune wide"
    assert points["old name"] == "old name"


async def test_distinct_summaries_in_metrics_are_capped_and_the_overflow_counted(
    make_pg: Callable[..., PostgresClient], otel: Otel
) -> None:
    cap, statements = 50, 10_000
    async with make_pg(query_summary_cap=cap, max_size=5, min_size=5) as pg:

        async def worker(first: int) -> None:
            for i in range(first, statements, 5):  # dynamically built: a new CTE name, so a new summary, each time
                assert await pg.fetchval(f"WITH c{i} AS (SELECT $1::int AS n) SELECT n FROM c{i}", i) == i

        await asyncio.gather(*(worker(n) for n in range(5)))
        spans = otel.spans()
        assert len({s.name for s in spans}) == statements + 1  # spans keep every summary (+ connect)
    points = otel.points(names.OPERATION_DURATION)
    summaries = {a[names.DB_QUERY_SUMMARY] for a, _ in points if names.DB_QUERY_SUMMARY in a}
    assert len(summaries) == cap + 1
    assert OVERFLOW in summaries
    overflowed = [(a, n) for a, n in points if a.get(names.DB_QUERY_SUMMARY) == OVERFLOW]
    assert [(a[names.DB_OPERATION_NAME], n) for a, n in overflowed] == [("SELECT", statements - cap)]
    assert [v for _, v in otel.points(names.QUERY_SUMMARY_OVERFLOW)] == [statements - cap]
    assert len(pg._telemetry._ops["fetchval"]) <= 1000  # the per-statement cache stays bounded too


async def test_retries_and_rejections_carry_the_duration_points_operation(
    make_pg: Callable[..., PostgresClient], pg_server: PostgresServer, otel: Otel
) -> None:
    pg = make_pg(retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01, "deadline": 10},
                 breaker={"fail_max": 1, "reset_timeout": 30})  # fmt: skip
    await pg.connect()
    await asyncio.to_thread(pg_server.stop, "immediate")
    try:
        with pytest.raises(ServiceUnavailableError, match="SELECT pg_class failed"):
            await pg.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", PARAM)
        with pytest.raises(CircuitOpenError, match="SELECT pg_class was not sent") as rejection:
            await pg.fetchval("SELECT count(*) FROM pg_class WHERE relname = $1", PARAM)
        copied = pickle.loads(pickle.dumps(rejection.value))  # errors name the summary, as a plain string
        assert (copied.operation, type(copied.operation)) == ("SELECT pg_class", str)
    finally:
        await asyncio.to_thread(pg_server.start)
        await pg.close()
    retries = [a for a, v in otel.points(names.RETRIES) if v]
    assert retries and {a[names.DB_OPERATION_NAME] for a in retries} == {"SELECT"}
    rejected = [a for a, v in otel.points(names.BREAKER_REJECTIONS) if v]
    assert [a[names.DB_OPERATION_NAME] for a in rejected] == ["SELECT"]
    failed = {(a[names.DB_OPERATION_NAME], a[names.DB_QUERY_SUMMARY], a[names.ERROR_TYPE])
              for a, _ in otel.points(names.OPERATION_DURATION) if names.ERROR_TYPE in a}  # fmt: skip
    assert ("SELECT", "SELECT pg_class", "circuit_open") in failed
    assert PARAM not in otel.everything_as_text()


async def test_no_parameter_value_or_literal_reaches_any_span_or_metric(
    make_pg: Callable[..., PostgresClient], otel: Otel
) -> None:
    async with make_pg() as pg:
        await pg.execute(SCHEMA)
        await pg.execute(f"INSERT INTO ohlc VALUES (1, '{LITERAL}')")
        await pg.execute("INSERT INTO ohlc VALUES ($1, $2)", 2, PARAM)
        await pg.fetch(f"SELECT * FROM ohlc WHERE px IN ($1, '{LITERAL}')", PARAM)
        await pg.fetchrow(f"SELECT px FROM ohlc WHERE px = $1 OR px = E'{LITERAL}'", PARAM)
        await pg.fetchval(f"SELECT $$ {LITERAL} $$ || $1::text", PARAM)
        await pg.executemany(f"UPDATE ohlc SET px = $2 || '{LITERAL}' WHERE ts = $1", [(1, PARAM), (2, PARAM)])
        await pg.copy_records("ohlc", [(3, PARAM)], columns=["ts", "px"])
        await pg.copy_upsert("ohlc", [(4, PARAM)], columns=["ts", "px"], key_columns=["ts"])
        await pg.bulk_upsert_instruments([{"symbol": PARAM, "note": LITERAL}], PARAM)
        await pg.transaction(lambda c: c.execute(f"DELETE FROM ohlc WHERE px = '{LITERAL}' AND px <> $1", PARAM))
        with pytest.raises(asyncpg.DataError):
            await pg.fetchval(f"SELECT $1::int, '{LITERAL}'", PARAM)  # asyncpg's message quotes the argument
        with pytest.raises(asyncpg.UniqueViolationError):
            await pg.execute(f"INSERT INTO ohlc VALUES (2, '{LITERAL}')")
    spans = otel.spans()
    assert len(spans) >= 12
    assert any(names.DB_QUERY_TEXT in (s.attributes or {}) for s in spans)  # query text is on, and checked
    for span in spans:
        shown = span.name + repr(dict(span.attributes or {})) + repr([(e.name, e.attributes) for e in span.events])
        assert PARAM not in shown and LITERAL not in shown, span.name
    for metric in (names.OPERATION_DURATION, names.RETRIES, names.QUERY_SUMMARY_OVERFLOW):
        for attrs, _ in otel.points(metric):
            assert PARAM not in repr(attrs) and LITERAL not in repr(attrs)
    text = otel.everything_as_text()
    assert PARAM not in text and LITERAL not in text

"""db.query.summary, db.operation.name, db.collection.name and literal-free text of SQL statements."""

from __future__ import annotations

import tracemalloc

import pytest

from trading_shared.telemetry.query_summary import OVERFLOW, CardinalityCap, QuerySummaries, summarise

CASES = [
    ("SELECT * FROM instruments WHERE exchange = $1", "SELECT instruments", "SELECT", "instruments"),
    ("select id from public.instruments i join ohlc o on o.id = i.id", "SELECT public.instruments ohlc", "SELECT",
     None),
    ("INSERT INTO ohlc (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b", "INSERT ohlc", "INSERT",
     "ohlc"),
    ("SELECT bulk_upsert_instruments($1::jsonb)", "SELECT bulk_upsert_instruments", "bulk_upsert_instruments", None),
    ("CALL archive_trades($1)", "CALL archive_trades", "archive_trades", None),
    ("SELECT 40 + $1::int", "SELECT", "SELECT", None),
    ("CREATE TABLE t (id int); GRANT ALL ON t TO r", "CREATE t GRANT", None, None),
    ("SELECT * FROM t WHERE id = $1;", "SELECT t", "SELECT", "t"),
    ("CREATE OR REPLACE FUNCTION f(x int) RETURNS TABLE (y int) LANGUAGE sql AS $$ SELECT 1 $$", "CREATE f", "CREATE",
     "f"),
    ("DROP VIEW IF EXISTS v", "DROP v", "DROP", "v"),
    ("INSERT INTO ohlc SELECT * FROM _ts_stage ON CONFLICT DO NOTHING", "INSERT ohlc SELECT _ts_stage", "INSERT", None),
    ("UPDATE orders SET status = 'filled' WHERE id = 42", "UPDATE orders", "UPDATE", "orders"),
    ("DELETE FROM trades WHERE ts < now() - interval '1 day'", "DELETE trades", "DELETE", "trades"),
    ("COPY ohlc (a, b) FROM STDIN", "COPY ohlc", "COPY", "ohlc"),
    ("CREATE TEMP TABLE IF NOT EXISTS _ts_stage (LIKE ohlc INCLUDING DEFAULTS) ON COMMIT DROP", "CREATE _ts_stage",
     "CREATE", "_ts_stage"),
    ('-- a comment\nSELECT count(*) FROM "Odd""Name"', 'SELECT Odd"Name', "SELECT", 'Odd"Name'),
    ("SELECT extract(epoch from ts) FROM ticks WHERE x IN (SELECT id FROM y)", "SELECT ticks SELECT y", "SELECT", None),
    ("SELECT * FROM t FOR UPDATE", "SELECT t", "SELECT", "t"),
    ("BEGIN", "BEGIN", "BEGIN", None),
]  # fmt: skip


@pytest.mark.parametrize(("statement", "summary", "operation", "collection"), CASES)
def test_statements_are_named_by_their_operations_and_targets(
    statement: str, summary: str, operation: str, collection: str | None
) -> None:
    names = summarise(statement)
    assert (names.summary, names.operation, names.collection) == (summary, operation, collection)


@pytest.mark.parametrize(
    "literal", ["'s3cret'", "E'it''s s3cret'", "$$s3cret$$", "$tag$s3cret$tag$", "12345678", "3.14e10", "X'DEADBEEF'"]
)
def test_no_literal_survives_in_the_text(literal: str) -> None:
    names = summarise(f"SELECT * FROM accounts WHERE token = {literal} AND id = $1")
    assert names.text == "SELECT * FROM accounts WHERE token = ? AND id = $1"
    assert "s3cret" not in names.summary and "s3cret" not in names.text


@pytest.mark.parametrize(
    ("statement", "procedure", "keyword"),
    [("SELECT bulk_upsert_instruments($1)", "bulk_upsert_instruments", "SELECT"), ("CALL p()", "p", "CALL"),
     ("SELECT count(*) FROM t", None, "SELECT"), ("SELECT 1; SELECT f()", None, None)],
)  # fmt: skip
def test_functions_and_procedures_are_named_apart_from_the_sql_keyword(
    statement: str, procedure: str | None, keyword: str | None
) -> None:
    names = summarise(statement)
    assert (names.procedure, names.keyword) == (procedure, keyword)


def test_comments_are_removed_from_the_text() -> None:
    names = summarise("/* trace 'x' */ SELECT id FROM t -- s3cret note\nWHERE id = $1 /* s3cret */")
    assert names.text == "SELECT id FROM t \nWHERE id = $1"
    assert names.summary == "SELECT t"


def test_summaries_are_cached_up_to_a_bound_and_stay_right_past_it() -> None:
    summaries = QuerySummaries(max_entries=100)
    for i in range(10_000):
        assert summaries(f"SELECT * FROM t{i} WHERE a = 1").summary == f"SELECT t{i}"
    assert len(summaries) == 100
    first = summaries("SELECT * FROM t0 WHERE a = 1")
    assert summaries("SELECT * FROM t0 WHERE a = 1") is first  # a look-up, not a new parse


def test_cardinality_cap_lets_known_values_through_and_counts_the_overflow() -> None:
    cap = CardinalityCap(limit=3)
    assert [cap(v) for v in ("a", "b", "c", "d", "a", "e")] == ["a", "b", "c", OVERFLOW, "a", OVERFLOW]
    assert cap.overflowed == 2


def test_summary_caches_hold_bounded_memory_however_many_and_long_the_statements() -> None:
    from trading_shared.postgres.query_telemetry import MAX_CACHED_STATEMENTS, PostgresTelemetry

    telemetry = PostgresTelemetry(
        query_text=True, summary_cap=200, pool_name="p", namespace="db", address="h", port=5432
    )
    padding = "x" * 3_000  # long statements: the character budget, not the entry count, is what binds
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(2_000):  # each text is made here, so it is counted only if a cache keeps it
            text = f"SELECT * FROM t{i} WHERE note = '{padding}' AND id = $1"
            assert telemetry.statement("fetch", text).summary == f"SELECT t{i}"
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert telemetry._cached <= MAX_CACHED_STATEMENTS
    assert len(telemetry._summaries) <= MAX_CACHED_STATEMENTS
    # The key texts are shared by both caches (1M characters at most), plus each kept summary's literal-free text.
    assert held < 3_000_000, held

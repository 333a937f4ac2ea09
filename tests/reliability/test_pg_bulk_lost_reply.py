"""Deterministic lost replies on the COPY and bulk write paths: the proxy drops the reply to one chosen request of
one call (the whole statement, an earlier chunk of a large one, or one statement of copy_upsert's transaction), on a
warm connection, and each case pins the exact outcome label and the exact rows on the server afterwards.

``copy_records`` is not idempotent: once its data may have reached the server it must never be re-sent (a re-send
would show every row twice) and the caller must hear "may have been applied" (OutcomeUnknownError).
``copy_upsert`` (one transaction: staging table, COPY, merge, COMMIT) and ``bulk_upsert_instruments`` (one keyed
function call) are idempotent: re-sent, acknowledged, every row once with the values of the call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest

from trading_shared import PostgresClient

from .faults import ids_in
from .harness import PgEnv, count_fault, pg_quiet
from .history import LEDGER, History, Outcome, check
from .test_pg_history import LEGACY_FUNCTION

SCHEMA = LEGACY_FUNCTION + "CREATE TABLE w_copy (id text PRIMARY KEY, v int); CREATE TABLE w_copyrec (id text, v int);"


@dataclass(frozen=True)
class Case:
    path: str
    rows: int  # rows per call: 20 fits one chunk; 20,000 (~0.5 MB) is sent in many
    request: str  # the request armed: "data" (the chunk with the call's first id) or a statement's marker
    reply: bytes  # the reply dropped: the first server chunk containing this (a CommandComplete tag)
    outcome: Outcome
    error: str | None


#: Markers of the statements of copy_upsert's transaction, found in the request bytes.
MARKERS = {
    "stage": b"CREATE TEMP TABLE",  # the staging table
    "merge": b"INSERT INTO",  # the merge from the staging table
    "commit": b"COMMIT;\x00",  # the COMMIT (applied, reply lost)
}

CASES = {
    # copy_records: the reply to the whole COPY lost (applied): indeterminate, never re-sent, rows there once.
    "copy_records-whole": Case("pg.copy_records", 20, "data", b"COPY 20\x00", Outcome.INFO, "OutcomeUnknownError"),
    # ... a large COPY, armed on its first chunk; the server reads every chunk, applies, its reply is lost.
    "copy_records-first_chunk": Case(
        "pg.copy_records", 20_000, "data", b"COPY 20000\x00", Outcome.INFO, "OutcomeUnknownError"
    ),
    # copy_upsert: whichever statement's reply is lost, the transaction is re-run and acknowledged.
    "copy_upsert-stage": Case("pg.copy_upsert", 20, "stage", b"CREATE TABLE\x00", Outcome.OK, None),
    "copy_upsert-data": Case("pg.copy_upsert", 20, "data", b"COPY 20\x00", Outcome.OK, None),
    "copy_upsert-first_chunk": Case("pg.copy_upsert", 20_000, "data", b"COPY 20000\x00", Outcome.OK, None),
    "copy_upsert-merge": Case("pg.copy_upsert", 20, "merge", b"INSERT 0 20\x00", Outcome.OK, None),
    "copy_upsert-commit": Case("pg.copy_upsert", 20, "commit", b"COMMIT\x00", Outcome.OK, None),
    # bulk_upsert_instruments: one statement; its reply lost (small, and a large one armed on its first chunk).
    "bulk_upsert-whole": Case("pg.bulk_upsert_instruments", 5, "data", b"SELECT 1\x00", Outcome.OK, None),
    "bulk_upsert-first_chunk": Case("pg.bulk_upsert_instruments", 5_000, "data", b"SELECT 1\x00", Outcome.OK, None),
}


def _writer(pg: PostgresClient, path: str, value: int) -> Callable[[list[str]], Awaitable[object]]:
    if path == "pg.copy_records":
        return lambda ids: pg.copy_records("w_copyrec", [(i, value) for i in ids], columns=["id", "v"])
    if path == "pg.copy_upsert":
        return lambda ids: pg.copy_upsert("w_copy", [(i, value) for i in ids], columns=["id", "v"], key_columns=["id"])
    return lambda ids: pg.bulk_upsert_instruments([{"symbol": i, "tick_size": str(value)} for i in ids], "rel")


READ = {
    "pg.copy_records": "SELECT id, v FROM w_copyrec",
    "pg.copy_upsert": "SELECT id, v FROM w_copy",
    "pg.bulk_upsert_instruments": "SELECT symbol, tick_size::int FROM instruments",
}


@pytest.mark.parametrize("name", list(CASES))
async def test_lost_reply_on_a_bulk_path(pg_env: PgEnv, name: str) -> None:
    case = CASES[name]
    admin = await pg_env.admin()
    try:
        await admin.execute(SCHEMA)
    finally:
        await admin.close()
    proxy = await pg_env.proxy()
    pg = pg_env.client(proxy, min_size=1, max_size=1)
    history = History(f"{case.path}.lost_reply")
    write = _writer(pg, case.path, 7)
    warm = history.new_ids(case.rows)  # connects and prepares everything the call under test will send
    await history.call(warm, lambda: write(warm))
    await pg_quiet(pg)
    ids = history.new_ids(case.rows)
    proxy.lose_next_reply(match=MARKERS.get(case.request, ids[0].encode()), reply_match=case.reply)
    count_fault("pg.reply_lost")
    await history.call(ids, lambda: write(ids))
    assert proxy.stats.replies_lost == 1, "the armed request was never sent"
    if case.request == "data":
        assert ids[0] in ids_in(proxy.lost_requests), "the reply lost was not the one to the call's data"
    under_test = set(ids)
    outcomes = {r.outcome for r in history.records if r.id in under_test}
    errors = {r.error for r in history.records if r.id in under_test}
    assert (outcomes, errors) == ({case.outcome}, {case.error}), history.errors()
    await pg_env.close_all()
    admin = await pg_env.admin()
    try:
        rows = [(str(r[0]), int(r[1])) for r in await admin.fetch(READ[case.path])]
    finally:
        await admin.close()
    expected = sorted((i, 7) for i in warm + ids)  # every case's call was applied (or re-run) exactly once
    assert sorted(rows) == expected  # the exact server state: each row once, with the call's values
    report = LEDGER.add(check(history, [r[0] for r in rows], keyed=case.path != "pg.copy_records"))
    report.assert_clean()

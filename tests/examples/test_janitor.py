"""examples/janitor.py: a run-once task; exit 0 when done, non-zero on failure."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
from example_runner import EXAMPLES, example_env, run_example

from support.servers import PostgresServer

SAMPLE = EXAMPLES / "data" / "instruments.json"


async def _rows(dsn: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT exchange, symbol, tick_size::text FROM instruments ORDER BY symbol")
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


async def test_upserts_the_sample_file_and_exits_0_twice(pg_dsn: str) -> None:
    env = example_env(POSTGRES_DSN=pg_dsn)
    first = await run_example("janitor.py", "--init-schema", env=env)
    assert first.returncode == 0, first.output
    assert "upserted 8 instruments for deribit" in first.output
    expected = {(i["symbol"], str(i["tick_size"])) for i in json.loads(SAMPLE.read_text())["instruments"]}
    rows = await _rows(pg_dsn)
    assert {(symbol, tick) for _, symbol, tick in rows} == expected
    assert {exchange for exchange, _, _ in rows} == {"deribit"}

    again = await run_example("janitor.py", env=env)  # the function upserts: running it again changes nothing
    assert again.returncode == 0, again.output
    assert await _rows(pg_dsn) == rows


async def test_reads_the_settings_from_postgres_parts(pg_server: PostgresServer, pg_dsn: str, tmp_path: Path) -> None:
    data = tmp_path / "list.json"
    data.write_text(json.dumps([{"symbol": "XBTUSD", "tick_size": 0.5, "meta": {"kind": "swap"}}]))
    db = pg_dsn.rsplit("/", 1)[1]
    env = example_env(POSTGRES_HOST=pg_server.host, POSTGRES_PORT=str(pg_server.port), POSTGRES_DB=db)
    result = await run_example("janitor.py", str(data), "--exchange", "bitmex", "--init-schema", env=env)
    assert result.returncode == 0, result.output
    assert await _rows(pg_dsn) == [("bitmex", "XBTUSD", "0.5")]


async def test_an_unreachable_database_exits_1_without_leaking_the_password() -> None:
    env = example_env(
        POSTGRES_DSN="postgresql://svc:hunter2-secret@127.0.0.1:1/prod",
        POSTGRES_CONNECT_TIMEOUT="0.5",
        POSTGRES_RETRY__MAX_ATTEMPTS="3",
        POSTGRES_RETRY__DEADLINE="2",
    )
    result = await run_example("janitor.py", env=env)
    assert result.returncode == 1, result.output
    assert "database unavailable after 3 attempt(s)" in result.output
    assert "hunter2-secret" not in result.output


async def test_a_missing_database_function_exits_1(pg_dsn: str) -> None:
    result = await run_example("janitor.py", env=example_env(POSTGRES_DSN=pg_dsn))  # no --init-schema
    assert result.returncode == 1, result.output
    assert "database error 42883" in result.output  # undefined_function


async def test_a_bad_file_exits_2(tmp_path: Path) -> None:
    env = example_env(POSTGRES_DSN="postgresql://postgres@127.0.0.1:1/never-used")
    missing = await run_example("janitor.py", str(tmp_path / "nope.json"), env=env)
    assert missing.returncode == 2, missing.output
    assert "cannot read" in missing.output
    broken = tmp_path / "broken.json"
    broken.write_text('{"exchange": "x", "instruments": [{"tick_size": 1}]}')
    bad = await run_example("janitor.py", str(broken), env=env)
    assert bad.returncode == 2, bad.output
    assert "expected a list of objects with a 'symbol' each" in bad.output


async def test_an_invalid_setting_exits_2_without_echoing_it() -> None:
    result = await run_example("janitor.py", env=example_env(POSTGRES_DSN="mysql://root:pw-secret@db/x"))
    assert result.returncode == 2, result.output
    assert "configuration error" in result.output
    assert "pw-secret" not in result.output

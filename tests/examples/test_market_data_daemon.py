"""examples/market_data_daemon.py: ticks -> stream -> consumer group -> candles; clean exits; nothing lost."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from example_runner import EXAMPLES, ROOT, example_env, run_example

from support.leaks import eventually

STREAM = "test:ticks"


async def _ticks_in_candles(dsn: str) -> tuple[int, int]:
    """(ticks folded, candle rows)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT coalesce(sum(trades), 0) AS ticks, count(*) AS rows FROM candles")
    finally:
        await conn.close()
    return int(row["ticks"]), int(row["rows"])


def _candles_module() -> Any:
    spec = importlib.util.spec_from_file_location("example_candles", EXAMPLES / "candles.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("example_candles", module)
    spec.loader.exec_module(module)
    return module


async def _candles_match_the_stream(dsn: str, url: str) -> int:
    """Every candle row equals the fold of exactly the valid ticks the stream holds for it, by stream entry.

    Per candle, not a total: trades, volume, open, close and the last entry ID folded in must all match, so one tick
    lost from one candle and one counted twice in another cannot cancel out. The stream is the ground truth of what
    was produced (a batch of unknown outcome is there or not). Returns the number of valid ticks."""
    candles = _candles_module()
    client = aioredis.from_url(url)
    try:
        entries = await client.xrange(STREAM)
    finally:
        await client.aclose()
    book = candles.CandleBook(bucket_seconds=2)
    valid = 0
    for entry_id, fields in entries:
        try:
            tick = candles.parse_tick(fields)
        except candles.PoisonMessage:
            continue
        assert book.fold(tick, candles.parse_id(entry_id)), f"stream entry {entry_id!r} twice in the stream"
        valid += 1
    expected = {key: (c.open, c.close, c.volume, c.trades, tuple(c.last)) for key, c in book.candles.items()}
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT symbol, bucket, open, close, volume, trades, last_ms, last_seq FROM candles")
    finally:
        await conn.close()
    actual = {
        (r["symbol"], r["bucket"]): (r["open"], r["close"], r["volume"], r["trades"], (r["last_ms"], r["last_seq"]))
        for r in rows
    }
    assert set(actual) == set(expected), set(actual) ^ set(expected)
    wrong = {k: (actual[k], expected[k]) for k in expected if actual[k] != expected[k]}
    assert not wrong, f"{len(wrong)} candle(s) differ from the stream (table, stream): {list(wrong.items())[:3]}"
    return valid


async def _stream_len(url: str, key: str) -> int:
    client = aioredis.from_url(url)
    try:
        return int(await client.xlen(key))
    finally:
        await client.aclose()


def _args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--stream",
        STREAM,
        "--rate",
        "1500",
        "--poison-every",
        "200",
        "--bucket-seconds",
        "2",
        "--stats-file",
        str(tmp_path / "stats.json"),
        *extra,
    ]


async def test_a_timed_run_drains_checks_and_exits_0_with_poison_dead_lettered(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    env = example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url)
    result = await run_example("market_data_daemon.py", *_args(tmp_path, "--duration", "3", "--init-schema"), env=env)
    assert result.returncode == 0, result.output
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["check"]["ok"] is True, stats
    assert stats["produced"] >= 3000
    assert stats["produced_poison"] == stats["produced"] // 200
    assert stats["dead_lettered"] == stats["produced_poison"]
    assert stats["acked"] == stats["produced"] == stats["consumed"]
    ticks, rows = await _ticks_in_candles(pg_dsn)
    assert ticks == stats["produced"] - stats["produced_poison"]
    assert rows >= 8  # 8 symbols, 2-second buckets
    assert await _stream_len(redis_url, f"dlq:{STREAM}") == stats["dead_lettered"]
    assert await _candles_match_the_stream(pg_dsn, redis_url) == ticks  # per candle and per entry, not a total
    assert "market-data stopped (exit code 0): every task finished" in result.output
    assert "check: " in result.output and ": OK" in result.output

    again = await run_example("market_data_daemon.py", *_args(tmp_path, "--duration", "1"), env=env)
    assert again.returncode == 0, again.output  # same stream, group, table: continues, check still exact


async def test_sigterm_exits_0_and_a_drain_run_loses_and_duplicates_nothing(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    env = example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url)
    stats_file = tmp_path / "stats.json"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "market_data_daemon.py"),
        *_args(tmp_path, "--init-schema"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )

    async def producing() -> bool:
        try:
            return json.loads(stats_file.read_text())["folded"] > 2000
        except (OSError, ValueError):
            return proc.returncode is not None

    try:
        assert await eventually(producing, timeout=30, interval=0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = out.decode()
    assert proc.returncode == 0, output
    assert "market-data stopping: received SIGTERM" in output
    first = json.loads(stats_file.read_text())

    drain = await run_example("market_data_daemon.py", *_args(tmp_path, "--drain"), env=env)
    assert drain.returncode == 0, drain.output
    ticks, _ = await _ticks_in_candles(pg_dsn)
    valid = first["produced"] - first["produced_poison"]
    assert valid <= ticks <= valid + first["produce_unknown"]
    # lost = 0, duplicated = 0, per candle and per stream entry (a loss and a duplicate cannot cancel out)
    assert await _candles_match_the_stream(pg_dsn, redis_url) == ticks


async def test_with_prometheus_port_it_serves_the_sdk_metrics(pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    env = example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "market_data_daemon.py"),
        *_args(tmp_path, "--init-schema", "--duration", "4", "--prometheus-port", "0"),
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line.startswith("metrics: http://127.0.0.1:"), line
        url = line.split(" ", 1)[1].strip()
        await asyncio.sleep(1.5)
        text = await asyncio.to_thread(_fetch, url)
        assert "db_client_operation_duration_seconds_bucket" in text
        assert 'db_client_connection_pool_name="redis"' in text
        assert 'db_client_connection_pool_name="postgres"' in text
        assert "trading_shared_circuit_breaker_state" in text
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()


def _fetch(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


async def test_a_crash_exits_non_zero(redis_url: str, tmp_path: Path) -> None:
    env = example_env(
        POSTGRES_DSN="postgresql://postgres@127.0.0.1:1/none",
        POSTGRES_CONNECT_TIMEOUT="0.5",
        POSTGRES_RETRY__DEADLINE="1",
        REDIS_URL=redis_url,
    )
    result = await run_example("market_data_daemon.py", *_args(tmp_path, "--duration", "2"), env=env)
    assert result.returncode == 1, result.output
    assert "a client failed to connect" in result.output

"""The issue's "done when": a daemon writes a market-data stream in bulk, reads it through a consumer group and
survives a Redis crash and restart (AOF, fsync always) without losing or duplicating a message."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from redis_testing import FAST

from support.leaks import eventually
from support.otel import Otel
from support.servers import RedisServer, ServerError
from trading_shared import RedisClient, RedisSettings
from trading_shared.telemetry import names

TOTAL = 20_000


@pytest.fixture(scope="module")
def durable_redis() -> Iterator[RedisServer]:
    """A private redis-server with an append-only file fsynced on every write: data survives a SIGKILL."""
    server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start a durable redis-server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()


async def test_bulk_write_and_group_read_survive_a_crash_restart_exactly_once(
    durable_redis: RedisServer, otel: Otel
) -> None:
    durable_redis.ensure_running()
    durable_redis.cli("FLUSHALL")
    restart_proof = {"max_attempts": 100, "initial_backoff": 0.02, "max_backoff": 0.1, "deadline": 10}
    settings = RedisSettings(url=durable_redis.url(), **{**FAST, "retry": restart_proof, "breaker": {"fail_max": 50}})
    stream, group = "md:ticks", "strategy"
    messages = [{"seq": i, "sym": "ETH-USD", "px": 3000.5} for i in range(TOTAL)]
    seen: list[int] = []

    async with RedisClient(settings, **otel.providers()) as r:
        await r.ensure_consumer_group(stream, group)
        producing = asyncio.create_task(r.xadd_bulk(stream, messages, chunk_size=200))

        async def consume() -> None:
            while len(set(seen)) < TOTAL:
                for start_id in ("0", ">"):  # own pending first: entries a lost reply delivered are re-read
                    batch = await r.read_stream_messages(
                        stream, group, "c1", count=500, block_ms=200, start_id=start_id
                    )
                    seen.extend(int(m.fields[b"seq"]) for m in batch)
                    if batch:
                        await r.acknowledge_message(stream, group, *(m.id for m in batch))

        consuming = asyncio.create_task(consume())
        probe = aioredis.from_url(durable_redis.url())

        async def a_third_written() -> bool:
            return int(await probe.xlen(stream)) >= TOTAL // 3

        try:
            assert await eventually(a_third_written, timeout=20, interval=0.002)
        finally:
            await probe.aclose()
        assert not producing.done()
        await asyncio.to_thread(durable_redis.restart, "kill")  # SIGKILL mid-write, then start on the same port

        assert await producing == TOTAL
        await asyncio.wait_for(consuming, 20)

    check = aioredis.from_url(durable_redis.url())
    try:
        entries = await check.xrange(stream)
        pending = await check.xpending(stream, group)
    finally:
        await check.aclose()
    assert [int(f[b"seq"]) for _, f in entries] == list(range(TOTAL))  # lost = 0, duplicated = 0, in order
    assert sorted(set(seen)) == list(range(TOTAL))  # every message consumed
    assert pending["pending"] == 0  # and acknowledged
    assert sum(v for _, v in otel.points(names.RETRIES)) >= 1  # the crash really hit the calls in flight

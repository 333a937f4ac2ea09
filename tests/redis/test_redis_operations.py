"""Key, hash, list and pub/sub operations, pipelines and transactions on a real server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from support.otel import Otel
from support.proxy import FaultProxy
from trading_shared import OutcomeUnknownError, RedisClient
from trading_shared.telemetry import names

NON_UTF8 = bytes(range(256))


async def test_non_utf8_keys_and_values_round_trip(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        key = b"\xff\xfekey"
        assert await r.set(key, NON_UTF8) is True
        assert await r.get(key) == NON_UTF8
        assert await r.hset(b"h\x80", b"f\x81", NON_UTF8) == 1
        assert await r.hget(b"h\x80", b"f\x81") == NON_UTF8
        assert await r.hgetall(b"h\x80") == {b"f\x81": NON_UTF8}
        await r.lpush(b"q\x90", NON_UTF8)
        assert await r.brpop(b"q\x90", 0.5) == (b"q\x90", NON_UTF8)
        entry_id = await r.xadd(b"s\xa0", {b"f\xa1": NON_UTF8})
        await r.ensure_consumer_group(b"s\xa0", b"g\xa2")
        [entry] = await r.read_stream_messages(b"s\xa0", b"g\xa2", b"c\xa3")
        assert entry.id == entry_id and entry.fields == {b"f\xa1": NON_UTF8}


async def test_key_operations(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        assert await r.get("missing") is None
        assert await r.set("a", "1", ex=100) is True
        assert await r.set("a", "2", nx=True) is False
        assert await r.set("b", "2", xx=True) is False
        assert await r.set("a", 3, xx=True, px=50_000) is True
        assert await r.get("a") == b"3"
        assert await r.expire("a", 100) is True
        assert await r.expire("missing", 100) is False
        assert await r.incr("n") == 1
        assert await r.incr("n", 41) == 42
        assert await r.delete("a", "n", "missing") == 2
        assert await r.delete() == 0
        assert await r.hgetall("nohash") == {}
        assert await r.hset("h", mapping={"x": 1, "y": b"2"}) == 2
        assert await r.hgetall("h") == {b"x": b"1", b"y": b"2"}
        with pytest.raises(ValueError, match="ex or px"):
            await r.set("a", 1, ex=1, px=1)
        with pytest.raises(ValueError, match="nx or xx"):
            await r.set("a", 1, nx=True, xx=True)
        with pytest.raises(ValueError, match="positive"):
            await r.set("a", 1, ex=0)
        with pytest.raises(ValueError, match="timeout"):
            await r.brpop("q", 0)


async def test_publish_reaches_a_subscriber(make_redis: Callable[..., RedisClient], redis_url: str) -> None:
    sub_client = aioredis.from_url(redis_url)
    pubsub = sub_client.pubsub()
    try:
        await pubsub.subscribe("ticks")
        await pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        async with make_redis() as r:
            assert await r.publish("ticks", b"\x01px") == 1
        msg = await pubsub.get_message(timeout=1.0)
        assert msg is not None and msg["data"] == b"\x01px"
    finally:
        await pubsub.aclose()
        await sub_client.aclose()


async def test_pipeline_and_transaction(make_redis: Callable[..., RedisClient], otel: Otel) -> None:
    async with make_redis() as r:
        assert await r.run_pipeline(lambda p: p.set("a", 1).incr("a").get("a").hgetall("a-hash")) == [
            True,
            2,
            b"2",
            {},
        ]
        assert await r.run_pipeline(lambda p: p.incr("t").incr("t"), transaction=True) == [1, 2]
        assert await r.run_pipeline(lambda p: p.get("a").get("t"), idempotent=True) == [b"2", b"2"]
        assert await r.run_pipeline(lambda p: None) == []
    operations = {a[names.DB_OPERATION_NAME] for a, _ in otel.points(names.OPERATION_DURATION)}
    assert {"PIPELINE", "MULTI INCRBY", "PIPELINE GET"} <= operations


async def test_pipeline_errors_do_not_quote_the_commands(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        await r.set("text", "secret-value")
        with pytest.raises(rex.ResponseError) as info:
            await r.run_pipeline(lambda p: p.set("k-secret", "v-secret").lpush("text", "v-secret").get("k-secret"))
        assert "WRONGTYPE" in str(info.value)
        assert "secret" not in str(info.value)
        assert await r.get("k-secret") == b"v-secret"  # outside a transaction the others were applied
        replies = await r.run_pipeline(lambda p: p.lpush("text", "x").get("text"), raise_on_error=False)
        assert isinstance(replies[0], rex.ResponseError) and replies[1] == b"secret-value"
        with pytest.raises(rex.ResponseError, match="unknown command"):  # rejected while queued: nothing applied
            await r.run_pipeline(lambda p: p.set("k2", "v").execute_command("NOSUCHCMD"), transaction=True)
        assert await r.get("k2") is None


async def test_pipeline_is_not_resent_after_a_lost_reply_unless_idempotent(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy
) -> None:
    async with make_proxied() as r:
        await r.set("warm", 1)
        proxy.lose_next_reply()
        with pytest.raises(OutcomeUnknownError):
            await r.run_pipeline(lambda p: p.incr("n").incr("n"), transaction=True)
        proxy.lose_next_reply()
        assert await r.run_pipeline(lambda p: p.set("x", 1).get("x"), idempotent=True) == [True, b"1"]
        assert await r.get("n") == b"2"  # applied exactly once


async def test_run_gives_access_to_any_command(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        await r.set("k", "v")
        assert await r.run("STRLEN", lambda c: c.execute_command("STRLEN", "k"), idempotent=True) == 1
        assert await r.run("TYPE", lambda c: c.type("k"), idempotent=True) == b"string"  # redis-py helpers work
        result = await r.run("BLPOP", lambda c: c.execute_command("BLPOP", "none", 0.3), idempotent=False, blocking=0.3)
        assert result is None


async def test_concurrent_calls_share_a_small_pool(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis(max_connections=8) as r:
        await asyncio.gather(*(r.incr("c") for _ in range(8)))
        assert await r.get("c") == b"8"
        pool = r.connection_pool
        assert pool is not None and len(pool._in_use_connections) == 0


@pytest.mark.parametrize("seconds", [0, -1, True, 1.5])
async def test_expire_rejects_a_non_positive_time_before_sending(
    make_redis: Callable[..., RedisClient], seconds: Any
) -> None:
    async with make_redis() as r:
        await r.set("precious", "v")
        with pytest.raises(ValueError, match="seconds must be a positive int"):
            await r.expire("precious", seconds)
        assert await r.get("precious") == b"v"  # EXPIRE 0 / -1 would have deleted it
        assert await r.expire("precious", 60) is True

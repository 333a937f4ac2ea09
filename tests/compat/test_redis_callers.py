"""Contract tests: the SDK called exactly as the replaced client's callers call it (venoajie/trading-shared's
repositories, cache and health checks), each effect checked through a separate plain connection.

A change that breaks one of these breaks a service's existing code: keep them passing, or change docs/migration.md
and the CHANGELOG with it.
"""

from __future__ import annotations

import warnings

import orjson
import pytest
import redis.asyncio as aioredis

from trading_shared import RedisClient


# -- market data repository: pipelines --------------------------------------------------------------------------------
async def test_update_ticker_data_pipeline_hset_mapping_and_expire(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "market:cache:deribit:ticker:BTC-PERPETUAL"
    pipe = await client.pipeline()
    await pipe.hset(key, mapping={"last": "100.5", "bid": "100.0"})
    await pipe.expire(key, 60)
    replies = await pipe.execute()
    assert replies == [2, True]
    assert await plain.hgetall(key) == {b"last": b"100.5", b"bid": b"100.0"}
    assert 0 < await plain.ttl(key) <= 60


async def test_cache_ticker_pipeline_hset_field_value(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "market:cache:deribit:ticker:ETH"
    payload = orjson.dumps({"price": 1.5})
    pipe = await client.pipeline()
    await pipe.hset(key, "payload", payload)
    await pipe.expire(key, 5400)
    await pipe.execute()
    assert await plain.hget(key, "payload") == payload
    assert await plain.ttl(key) > 5000


async def test_realtime_candle_pipeline_hset_name_keyword(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "market:cache:deribit:ohlc:live:BTC"
    pipe = await client.pipeline()
    await pipe.hset(name=key, mapping={"tick": "1", "close": "2.0"})
    await pipe.expire(key, 60)
    await pipe.execute()
    assert await plain.hgetall(key) == {b"tick": b"1", b"close": b"2.0"}
    assert (await client.hgetall(key))[b"close"] == b"2.0"  # get_realtime_candle reads bytes


async def test_pipeline_as_context_manager_chained_and_errors_raised(
    client: RedisClient, plain: aioredis.Redis
) -> None:
    async with client.pipeline(transaction=False) as pipe:
        pipe.set("a", "1").incr("a").lpush("l", "x")
        assert await pipe.execute() == [True, 2, 1]
    assert await plain.get("a") == b"2"
    await plain.set("s", "v")
    pipe = client.pipeline()
    pipe.lpush("s", "x")
    with pytest.raises(aioredis.ResponseError):  # a caller error: the driver's own exception
        await pipe.execute()


async def test_add_messages_to_stream_xadd_bulk(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.xadd_bulk("market:stream:trades", [{"payload": '{"a":1}'}, {"payload": '{"a":2}'}], maxlen=10000)
    entries = await plain.xrange("market:stream:trades")
    assert [f[b"payload"] for _, f in entries] == [b'{"a":1}', b'{"a":2}']


# -- hybrid market data, OHLC queue -----------------------------------------------------------------------------------
async def test_hybrid_lrange_returns_bytes(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "market:buffer:ohlc:deribit:BTC"
    await plain.lpush(key, orjson.dumps({"t": 1}), orjson.dumps({"t": 2}))
    raw = await client.lrange(key, 0, 10 - 1)
    assert [orjson.loads(c) for c in raw] == [{"t": 2}, {"t": 1}]
    assert await client.lrange("missing", 0, -1) == []


async def test_ohlc_queue_clear_enqueue_dequeue_size(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "queue:ohlc_work"
    await plain.lpush(key, b"old")
    await client.delete(key)
    await client.lpush(key, orjson.dumps({"symbol": "BTC"}))
    assert await plain.llen(key) == 1
    assert await client.llen(key) == 1
    result = await client.brpop(key, timeout=5)
    assert result is not None and orjson.loads(result[1]) == {"symbol": "BTC"}
    assert await client.llen(key) == 0


async def test_ltrim_sadd_smembers_zadd(client: RedisClient, plain: aioredis.Redis) -> None:
    await plain.rpush("l", "a", "b", "c")
    assert await client.ltrim("l", 0, 1) is True
    assert await plain.lrange("l", 0, -1) == [b"a", b"b"]
    assert await client.sadd("s") is None
    assert await client.sadd("s", "x", "y") == 2
    assert await client.smembers("s") == {b"x", b"y"}
    assert await client.zadd("z", {"m": 1.0}) == 1
    assert await client.zadd("z", {"m": 5.0}, nx=True) == 0
    assert await client.zadd("z", {"n": 2.0}, xx=True) == 0
    assert await plain.zrange("z", 0, -1, withscores=True) == [(b"m", 1.0)]
    assert await client.zrange("z", 0, -1, withscores=True) == [(b"m", 1.0)]
    assert await client.zcard("z") == 1


# -- stream processor repository --------------------------------------------------------------------------------------
async def test_stream_processor_read_ack_claim(client: RedisClient, plain: aioredis.Redis) -> None:
    stream, group = "market:stream:orders", "g"
    await client.ensure_consumer_group(stream, group)
    await plain.xadd(stream, {"payload": b'{"x":1}'})
    with pytest.warns(DeprecationWarning, match="block_ms"):
        messages = await client.read_stream_messages(
            stream_name=stream, group_name=group, consumer_name="c1", count=250, block=2000
        )
    assert len(messages) == 1
    message_id, fields = messages[0]
    assert fields == {b"payload": b'{"x":1}'}
    with pytest.warns(DeprecationWarning, match="min_idle_ms"):
        claimed = await client.xautoclaim_stale_messages(stream, group, "c2", 0, 100)
    assert claimed[0] == b"0-0"
    assert [m[0] for m in claimed[1]] == [message_id]
    assert claimed[2] == []
    next_id, entries, deleted = claimed
    assert next_id == claimed.next_id and entries == claimed.messages and deleted == claimed.deleted_ids
    await client.acknowledge_message(stream, group, message_id.decode())
    assert (await plain.xpending(stream, group))["pending"] == 0


async def test_new_stream_api_still_takes_its_own_names(client: RedisClient, plain: aioredis.Redis) -> None:
    await plain.xadd("s", {"f": "v"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entries = await client.read_stream_messages("s", "g", "c", count=10)
        claim = await client.xautoclaim_stale_messages("s", "g", "c2", min_idle_ms=0)
    assert entries[0].fields == {b"f": b"v"}
    assert claim.messages[0].id == entries[0].id


async def test_publish_state_change(client: RedisClient) -> None:
    async with client.pubsub() as ps:
        await ps.subscribe("state")
        assert (await ps.get_message(timeout=1.0))["type"] == "subscribe"  # type: ignore[index]
        assert await client.publish("state", "{}") == 1
        message = await ps.get_message(timeout=1.0)
    assert message is not None and message["data"] == b"{}"


async def test_move_to_dlq_xadd_to_dlq(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.xadd_to_dlq("market:stream:trades:deribit", [{"id": 1}, {"id": 2}])
    entries = await plain.xrange("deadletter:queue:market:stream")
    assert [orjson.loads(f[b"payload"]) for _, f in entries] == [{"id": 1}, {"id": 2}]
    await client.xadd_to_dlq("flat", [{"id": 3}])
    assert await plain.xlen("deadletter:queue:malformed:flat") == 1


def test_parse_stream_message_static() -> None:
    parsed = RedisClient.parse_stream_message({b"payload": b'{"a":[1,2]}', b"n": b"42", b"s": b"abc", b"b": b"\xff"})
    assert parsed == {"payload": {"a": [1, 2]}, "n": 42, "s": "abc", "b": b"\xff"}


async def test_move_message_to_dlq_and_ack_execute_resiliently(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.ensure_consumer_group("src", "g")
    message_id = await plain.xadd("src", {"f": "v"})
    await plain.xreadgroup("g", "c", {"src": ">"})

    async def command(pool: aioredis.Redis) -> None:
        pipe = pool.pipeline()
        pipe.xadd("dlq:src", {"payload": orjson.dumps({"error": "x"})})
        pipe.xack("src", "g", message_id)
        await pipe.execute()

    with pytest.warns(DeprecationWarning, match=r"RedisClient\.run"):
        await client.execute_resiliently(command, "move_to_dlq_and_ack")
    assert await plain.xlen("dlq:src") == 1
    assert (await plain.xpending("src", "g"))["pending"] == 0


async def test_read_grouped_streams_creates_groups_then_reads(client: RedisClient, plain: aioredis.Redis) -> None:
    assert await client.read_grouped_streams("g", "c", {"s1": ">", "s2": ">"}, block=100) == []
    await plain.xadd("s2", {"f": "v"})
    result = await client.read_grouped_streams("g", "c", {"s1": ">", "s2": ">"}, block=100)
    assert [(name, [f for _, f in entries]) for name, entries in result] == [(b"s2", [{b"f": b"v"}])]


# -- system state, health checks, universe cache --------------------------------------------------------------------
async def test_system_state_manager_hset_expire_hgetall_delete(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.hset("system:state:global", mapping={"status": "RUNNING", "reason": ""})
    await client.expire("system:state:global", 3600)
    assert (await client.hgetall("system:state:global"))[b"status"] == b"RUNNING"
    assert await plain.ttl("system:state:global") > 3000
    await plain.set("system:state:simple", "x")
    await client.delete("system:state:simple")
    assert await plain.exists("system:state:simple") == 0


async def test_set_and_get_system_state(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.set_system_state("HALTED", reason="drill")
    state = await plain.hgetall("system:state")
    assert state[b"status"] == b"HALTED" and state[b"reason"] == b"drill" and float(state[b"timestamp"]) > 0
    assert await plain.get("system:state:simple") == b"HALTED"
    with pytest.raises(NotImplementedError):
        await client.get_system_state()


async def test_system_state_repository_set_ex_get(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.set("system:state:repo", '{"s":1}', ex=30)
    assert await client.get("system:state:repo") == b'{"s":1}'
    assert 0 < await plain.ttl("system:state:repo") <= 30


async def test_dead_man_switch_setex_exists_delete(client: RedisClient, plain: aioredis.Redis) -> None:
    key = "healthcheck:svc:heartbeat"
    assert await client.exists(key) is False
    await client.setex(key, 30, "2026-12-04T00:00:00+00:00")
    assert await plain.get(key) == b"2026-12-04T00:00:00+00:00"
    assert 0 < await plain.ttl(key) <= 30
    assert await client.exists(key) is True
    await client.delete(key)
    assert await client.exists(key) is False


async def test_universe_cache_get_and_hgetall(client: RedisClient, plain: aioredis.Redis) -> None:
    await plain.set("universe", orjson.dumps([{"symbol": "BTC"}]))
    await plain.hset("universe:overrides", "ETH", orjson.dumps({"m": 1}))
    assert orjson.loads(await client.get("universe") or b"") == [{"symbol": "BTC"}]
    assert {k: orjson.loads(v) for k, v in (await client.hgetall("universe:overrides")).items()} == {b"ETH": {"m": 1}}


async def test_connection_helpers(client: RedisClient) -> None:
    assert client.is_connected() is False
    assert await client.ping() is True
    assert client.is_connected() is True
    assert await client.test_connection() is True
    assert await client.reconnect() is True
    with pytest.warns(DeprecationWarning, match=r"RedisClient\.run"):
        raw = await client.get_client_deprecated()
    assert await raw.execute_command("PING") is True


def test_old_import_path_resolves_to_sdk_classes() -> None:
    import importlib
    import sys

    sys.modules.pop("trading_shared.clients.redis_client", None)
    with pytest.warns(DeprecationWarning, match="from trading_shared import RedisClient"):
        module = importlib.import_module("trading_shared.clients.redis_client")
    assert module.RedisClient is RedisClient
    with pytest.warns(DeprecationWarning, match="use RedisClient"):
        module.CustomRedisClient()

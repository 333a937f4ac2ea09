"""The compatibility surface keeps the SDK's guarantees: the command table's re-send rules, no swallowed errors,
and pub/sub subscriptions that survive a Redis restart."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex
from compat_testing import FAST

from support.otel import Otel
from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import OutcomeUnknownError, RedisClient, RedisSettings, ServiceUnavailableError
from trading_shared.redis.commands_table import COMMANDS, READ_ONLY, lookup, stack_idempotent
from trading_shared.telemetry import names


def test_table_rules() -> None:
    assert COMMANDS["SET"].idempotent_for(["k", "v"]) is True
    assert COMMANDS["SET"].idempotent_for(["k", "v", "NX"]) is False
    assert COMMANDS["ZADD"].idempotent_for(["k", "INCR", 1, "m"]) is False
    assert COMMANDS["MSET"].keys(["a", 1, "b", 2]) == ["a", "b"]
    assert COMMANDS["XREADGROUP"].keys(["GROUP", "g", "c", "STREAMS", "s1", "s2", ">", ">"]) == ["s1", "s2"]
    assert COMMANDS["EVAL"].keys(["2", "k1", "k2", "arg"]) == ["k1", "k2"]
    assert lookup(("XGROUP", "CREATE", "s", "g", "0"))[0].name == "XGROUP CREATE"
    assert lookup(("xgroup create", "s"))[0].name == "XGROUP CREATE"
    assert {"GET", "LRANGE", "XINFO", "PING"} <= READ_ONLY and "SET" not in READ_ONLY
    assert stack_idempotent([(("HSET", "k", "f", "v"), {}), (("EXPIRE", "k", 5), {})]) is True
    assert stack_idempotent([(("HSET", "k", "f", "v"), {}), (("XADD", "s", "*", "f", "v"), {})]) is False
    assert stack_idempotent([(("NOT-A-COMMAND",), {})]) is False
    families = {"GET", "HSET", "LPUSH", "SADD", "ZADD", "EXPIRE", "TTL", "XADD", "PUBLISH", "SUBSCRIBE"}
    assert families <= COMMANDS.keys()


async def test_command_entry_point(client: RedisClient, plain: aioredis.Redis) -> None:
    await client.command("RPUSH", "l", "a", "b")
    assert await client.command("LRANGE", "l", 0, -1) == [b"a", b"b"]
    assert await client.command("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM") is True
    assert await plain.exists("s") == 1
    with pytest.raises(ValueError, match="command table"):
        await client.command("FLUSHALL")
    with pytest.raises(ValueError, match="blocking"):
        await client.command("BLPOP", "l", 1)
    with pytest.raises(ValueError, match="blocking"):
        await client.command("XREAD", "BLOCK", 100, "STREAMS", "s", "$")
    with pytest.raises(ValueError, match="pub/sub"):
        await client.command("SUBSCRIBE", "ch")
    assert await client.command("XREAD", "COUNT", 1, "STREAMS", "s", "0") == []


async def test_pipeline_resent_only_when_every_command_is_idempotent(
    proxied: tuple[RedisClient, FaultProxy], plain: aioredis.Redis
) -> None:
    r, proxy = proxied
    await r.ping()
    proxy.lose_next_reply(match=b"EXPIRE")
    pipe = await r.pipeline()
    await pipe.hset("h", mapping={"a": "1"})
    await pipe.expire("h", 60)
    assert await pipe.execute() == [0, True]  # re-sent (both idempotent): the field was set by the lost try
    proxy.lose_next_reply(match=b"LPUSH")
    pipe = r.pipeline()
    pipe.hset("h2", "a", "1").lpush("q", "x")
    with pytest.raises(OutcomeUnknownError) as info:
        await pipe.execute()
    assert info.value.may_have_been_applied is True
    assert await plain.llen("q") == 1  # applied once, never twice


async def test_execute_resiliently_not_resent_unless_told(
    proxied: tuple[RedisClient, FaultProxy], plain: aioredis.Redis
) -> None:
    r, proxy = proxied
    await r.ping()
    proxy.lose_next_reply(match=b"LPUSH")
    with pytest.warns(DeprecationWarning, match=r"RedisClient\.run"), pytest.raises(OutcomeUnknownError):
        await r.execute_resiliently(lambda pool: pool.lpush("q", "x"), "LPUSH q")
    assert await plain.llen("q") == 1


def _compat_calls(r: RedisClient) -> dict[str, Callable[[], Awaitable[Any]]]:
    async def pipeline() -> Any:
        pipe = await r.pipeline()
        await pipe.hset("k", mapping={"a": "1"})
        return await pipe.execute()

    return {
        "pipeline": pipeline,
        "exists": lambda: r.exists("k"),
        "llen": lambda: r.llen("k"),
        "lrange": lambda: r.lrange("k", 0, -1),
        "ltrim": lambda: r.ltrim("k", 0, 1),
        "setex": lambda: r.setex("k", 5, "v"),
        "sadd": lambda: r.sadd("k", "v"),
        "smembers": lambda: r.smembers("k"),
        "zadd": lambda: r.zadd("k", {"m": 1.0}),
        "ping": r.ping,
        "set_system_state": lambda: r.set_system_state("X"),
        "xadd_to_dlq": lambda: r.xadd_to_dlq("a:b:c", [{"x": 1}]),
        "read_grouped_streams": lambda: r.read_grouped_streams("g", "c", {"k": ">"}, block=50),
        "command": lambda: r.command("GET", "k"),
    }


async def test_no_compat_method_swallows_an_infrastructure_failure(redis_server: RedisServer) -> None:
    settings = RedisSettings(url=redis_server.url(), **{**FAST, "retry": {**FAST["retry"], "deadline": 0.5}})
    r = RedisClient(settings)
    try:
        await r.ping()
        redis_server.stop()
        for name, call in _compat_calls(r).items():
            with pytest.raises(ServiceUnavailableError) as info:
                await call()
            assert isinstance(info.value, ConnectionError), name
        assert await r.test_connection() is False
        assert await r.reconnect() is False
    finally:
        await r.close()
        redis_server.ensure_running()


async def test_no_compat_method_swallows_a_caller_error(client: RedisClient, plain: aioredis.Redis) -> None:
    await plain.set("k", "string")
    for name, call in _compat_calls(client).items():
        if name in ("ping", "setex", "set_system_state", "xadd_to_dlq", "exists", "command"):
            continue  # these succeed on a string key
        with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
            await call()
        await plain.set("k", "string")


# -- pub/sub ---------------------------------------------------------------------------------------------------------
async def test_subscription_survives_a_redis_restart(redis_server: RedisServer, redis_url: str) -> None:
    otel = Otel()
    r = RedisClient(RedisSettings(url=redis_url, **FAST), **otel.providers())
    plain = aioredis.Redis.from_url(redis_url)
    try:
        async with r.subscribe("ticks", patterns=["px:*"], health_interval=0.5, max_outage=20) as sub:
            await plain.publish("ticks", "1")
            first = await asyncio.wait_for(anext(sub), 5)
            assert (first["channel"], first["data"]) == (b"ticks", b"1")
            await asyncio.to_thread(redis_server.restart, "kill")

            async def publish_until_received() -> dict[str, Any]:
                while True:
                    with contextlib.suppress(rex.ConnectionError):  # Redis may still be restarting
                        await plain.publish("px:btc", "2")
                    await asyncio.sleep(0.1)

            publisher = asyncio.create_task(publish_until_received())
            try:
                message = await asyncio.wait_for(anext(sub), 15)
            finally:
                publisher.cancel()
                await asyncio.gather(publisher, return_exceptions=True)
            assert (message["type"], message["pattern"], message["data"]) == ("pmessage", b"px:*", b"2")
            assert sub.reconnects == 1
        events = [e for s in otel.spans("SUBSCRIBE") for e in s.events if e.name == names.EVENT_RESUBSCRIBED]
        assert len(events) == 1 and events[0].attributes is not None and events[0].attributes[names.GAP] > 0
        assert sum(v for _, v in otel.points(names.RESUBSCRIBES)) == 1
    finally:
        await plain.aclose()
        await r.close()
        otel.shutdown()


async def test_subscription_raises_instead_of_hanging_when_redis_stays_down(redis_server: RedisServer) -> None:
    r = RedisClient(RedisSettings(url=redis_server.url(), **FAST))
    try:
        async with r.subscribe("ticks", health_interval=0.3, max_outage=1.0) as sub:
            redis_server.stop()
            with pytest.raises(ServiceUnavailableError) as info:
                await asyncio.wait_for(anext(sub), 10)
            assert isinstance(info.value, ConnectionError)
    finally:
        await r.close()
        redis_server.ensure_running()


async def test_subscription_detects_a_silent_connection(proxied: tuple[RedisClient, FaultProxy]) -> None:
    r, proxy = proxied
    async with r.subscribe("ticks", health_interval=0.3, max_outage=1.5) as sub:
        proxy.blackhole()  # the connection stays open but nothing comes back
        with pytest.raises(ServiceUnavailableError):
            await asyncio.wait_for(anext(sub), 10)
        proxy.pass_through()

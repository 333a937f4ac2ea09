"""Attempts that send several requests: once one was sent, a later failure must not re-run the attempt."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis

from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import OutcomeUnknownError, RedisClient, ServiceUnavailableError


async def test_run_is_not_rerun_when_a_later_command_cannot_connect(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer
) -> None:
    runs = 0

    async def fn(r: aioredis.Redis) -> str:
        nonlocal runs
        runs += 1
        await r.execute_command("INCR", "a")  # applied
        if runs == 1:
            proxy.reset()  # pooled connection dropped, reconnects reset: the next command cannot be sent
            await asyncio.sleep(0.02)
        await r.execute_command("INCR", "b")
        return "ok"

    async with make_proxied() as r:
        with pytest.raises(OutcomeUnknownError) as info:
            await r.run("TWO_INCR", fn, idempotent=False)
        assert info.value.may_have_been_applied is True
        assert info.value.attempts == 1
        proxy.pass_through()
    assert runs == 1
    assert redis_server.cli("GET", "a") == "1"  # the caller asked for ONE increment


async def test_run_is_still_retried_when_its_first_command_cannot_connect(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer
) -> None:
    async def fn(r: aioredis.Redis) -> None:
        await r.execute_command("INCR", "a")
        await r.execute_command("INCR", "b")

    async with make_proxied(retry={"max_attempts": 10, "initial_backoff": 0.05, "max_backoff": 0.05}) as r:
        proxy.reset()
        await asyncio.sleep(0.05)
        heal = asyncio.get_running_loop().call_later(0.2, proxy.pass_through)
        try:
            await r.run("TWO_INCR", fn, idempotent=False)  # nothing was sent by the failed attempts
        finally:
            heal.cancel()
    assert (redis_server.cli("GET", "a"), redis_server.cli("GET", "b")) == ("1", "1")


async def test_run_refused_reply_after_an_applied_command_is_not_rerun(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    async def fn(r: aioredis.Redis) -> None:
        await r.execute_command("INCR", "a")
        await r.execute_command("EVAL", "return redis.error_reply('READONLY x')", 0)

    async with make_redis() as r:
        with pytest.raises(OutcomeUnknownError):
            await r.run("TWO", fn, idempotent=False)
        assert r.breaker.state.value == "closed"
    assert redis_server.cli("GET", "a") == "1"


async def test_pipeline_with_a_refused_reply_after_an_applied_command_is_not_resent(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    async with make_redis() as r:
        for transaction in (False, True):
            with pytest.raises(ServiceUnavailableError) as info:
                await r.run_pipeline(
                    lambda p: p.incr("n").eval("return redis.error_reply('READONLY x')", 0),
                    transaction=transaction,
                    idempotent=False,
                )
            assert info.value.may_have_been_applied is True
            assert info.value.attempts == 1
        assert redis_server.cli("GET", "n") == "2"  # once per call
        # returned in place when asked: nothing raised, nothing re-sent
        replies = await r.run_pipeline(
            lambda p: p.incr("n").eval("return redis.error_reply('READONLY x')", 0), raise_on_error=False
        )
        assert replies[0] == 3
        # an error reply of a pipeline whose every command failed: nothing ran, re-sent as before
        with pytest.raises(ServiceUnavailableError) as info:
            await r.run_pipeline(lambda p: p.eval("return redis.error_reply('READONLY x')", 0), idempotent=False)
        assert info.value.may_have_been_applied is False
        assert info.value.attempts > 1

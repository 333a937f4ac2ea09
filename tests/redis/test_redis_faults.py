"""RedisClient under real faults: lost replies, restarts, a stopped server, the breaker, cancellation, a full pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from support.otel import Otel
from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import (
    CircuitOpenError,
    OutcomeUnknownError,
    PoolExhaustedError,
    RedisClient,
    ServiceUnavailableError,
)
from trading_shared.redis.pool import Commands
from trading_shared.telemetry import names


def _retries(otel: Otel) -> float:
    return sum(v for _, v in otel.points(names.RETRIES))


async def test_lost_reply_to_incr_is_not_resent(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer, otel: Otel
) -> None:
    async with make_proxied() as r:
        proxy.lose_next_reply()
        with pytest.raises(OutcomeUnknownError) as info:
            await r.incr("n")
        assert info.value.may_have_been_applied is True
        assert info.value.attempts == 1
        assert proxy.stats.replies_lost == 1
        assert redis_server.cli("GET", "n") == "1"  # applied exactly once: neither we nor the driver re-sent it
        assert await r.incr("n") == 2


async def test_lost_reply_to_lpush_is_not_resent(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer
) -> None:
    async with make_proxied() as r:
        proxy.lose_next_reply()
        with pytest.raises(OutcomeUnknownError):
            await r.lpush("q", b"job-1")
        assert redis_server.cli("LLEN", "q") == 1


async def test_lost_reply_to_set_nx_is_not_resent(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer
) -> None:
    async with make_proxied() as r:
        proxy.lose_next_reply()
        with pytest.raises(OutcomeUnknownError):
            await r.set("lock", b"me", nx=True)  # a re-send would wrongly answer "not set"
        assert redis_server.cli("GET", "lock") == "me"


async def test_lost_reply_to_an_idempotent_command_is_retried(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, otel: Otel
) -> None:
    async with make_proxied() as r:
        await r.set("k", b"v")
        proxy.lose_next_reply()
        assert await r.get("k") == b"v"
        proxy.lose_next_reply()
        assert await r.hset("h", "f", b"1") in (0, 1)
        assert await r.hget("h", "f") == b"1"
    assert _retries(otel) == 2


async def test_non_idempotent_command_is_retried_when_its_connection_could_not_be_opened(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_server: RedisServer, otel: Otel
) -> None:
    async with make_proxied(
        retry={"max_attempts": 10, "initial_backoff": 0.05, "max_backoff": 0.05, "deadline": 3}
    ) as r:
        proxy.reset()  # drops the pooled connection; new ones are reset while connecting
        await asyncio.sleep(0.05)  # the pool's connection is now known dead, like an idle pool after a crash
        heal = asyncio.get_running_loop().call_later(0.2, proxy.pass_through)
        try:
            assert await r.incr("n") == 1  # every failed attempt failed before sending: safe to retry
        finally:
            heal.cancel()
    assert redis_server.cli("GET", "n") == "1"
    assert _retries(otel) >= 1


async def test_server_killed_and_restarted_mid_run_is_retried_and_recovers(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer, otel: Otel
) -> None:
    restart_proof = {"max_attempts": 30, "initial_backoff": 0.02, "max_backoff": 0.2, "deadline": 8}
    async with make_redis(retry=restart_proof) as r:
        done = asyncio.Event()
        ops = [0, 0]

        async def worker(n: int) -> None:
            i = 0
            while not done.is_set():
                await r.set(f"w{n}", i)
                # None only when the restart (no persistence) fell between the two calls
                assert await r.get(f"w{n}") in (str(i).encode(), None)
                ops[n] += 1
                i += 1

        workers = [asyncio.create_task(worker(n)) for n in (0, 1)]
        await asyncio.sleep(0.2)
        before = sum(ops)
        await asyncio.to_thread(redis_server.restart, "kill")
        await asyncio.sleep(0.2)
        done.set()
        await asyncio.gather(*workers)  # no call failed
        assert sum(ops) > before
    assert _retries(otel) >= 1
    assert r.breaker.state.value == "closed"


async def test_breaker_opens_rejects_without_io_half_opens_with_one_trial_and_closes(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer, otel: Otel
) -> None:
    r = make_redis(
        retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01, "deadline": 2},
        breaker={"fail_max": 3, "reset_timeout": 0.3},
    )
    await r.connect()
    await asyncio.to_thread(redis_server.stop)
    for _ in range(3):
        with pytest.raises(ServiceUnavailableError):
            await r.get("k")
    assert r.breaker.state.value == "open"

    t0 = time.perf_counter()
    for _ in range(100):
        with pytest.raises(CircuitOpenError):
            await r.get("k")
    assert (time.perf_counter() - t0) / 100 < 0.002  # no I/O: microseconds, not a connect timeout

    await asyncio.to_thread(redis_server.start)
    await asyncio.sleep(0.35)
    trial_started = asyncio.Event()
    release_trial = asyncio.Event()

    async def slow_trial(c: Commands) -> Any:
        trial_started.set()
        await release_trial.wait()
        return await c.execute_command("SET", "k", "v")

    trial = asyncio.create_task(r.run("SET", slow_trial, idempotent=True))
    await trial_started.wait()
    assert r.breaker.state.value == "half_open"
    for _ in range(5):  # only the one trial is let through
        with pytest.raises(CircuitOpenError):
            await r.get("k")
    release_trial.set()
    assert await trial
    assert r.breaker.state.value == "closed"
    assert await r.get("k") == b"v"
    await r.close()
    states = [a[names.BREAKER_STATE_ATTR] for a, _ in otel.points(names.BREAKER_TRANSITIONS)]
    assert sorted(states) == ["closed", "half_open", "open"]
    rejected = sum(v for _, v in otel.points(names.BREAKER_REJECTIONS))
    assert rejected == 105


async def test_caller_errors_are_not_retried_and_leave_the_breaker_alone(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    import redis.exceptions as rex

    async with make_redis(breaker={"fail_max": 1, "reset_timeout": 5}) as r:
        await r.set("s", "text")
        for _ in range(3):
            with pytest.raises(rex.ResponseError, match="WRONGTYPE"):
                await r.lpush("s", "x")
        assert r.breaker.state.value == "closed"
        assert r.breaker.failure_count == 0
    assert _retries(otel) == 0
    failed = [a for a, _ in otel.points(names.OPERATION_DURATION) if names.ERROR_TYPE in a]
    assert failed and all(a[names.DB_RESPONSE_STATUS_CODE] == "WRONGTYPE" for a in failed)


async def test_loading_server_is_retried(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        await r.set("k", "v")
        # DEBUG ERROR makes the server answer with that error reply: -LOADING means refused, not applied.
        results = await asyncio.gather(
            r.run("DEBUG", lambda c: c.execute_command("DEBUG", "ERROR", "LOADING not now"), idempotent=True),
            return_exceptions=True,
        )
        assert isinstance(results[0], ServiceUnavailableError)  # LOADING every time: retried, then gave up
        assert results[0].attempts == 4
        assert results[0].may_have_been_applied is False


async def test_cancellation_leaves_the_pool_clean(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis(max_connections=4) as r:
        tasks = [asyncio.create_task(r.brpop(f"q{i}", 5.0)) for i in range(3)]
        tasks += [
            asyncio.create_task(r.run("DEBUG", lambda c: c.execute_command("DEBUG", "SLEEP", "0.5"), idempotent=True))
        ]
        await asyncio.sleep(0.2)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(x, asyncio.CancelledError) for x in results)
        assert r.breaker.failure_count == 0
        assert await r.incr("after") == 1
        stats = r._pool_stats()
        assert stats is not None and stats.used == 0


async def test_full_pool_fails_fast_with_a_clear_error(make_redis: Callable[..., RedisClient], otel: Otel) -> None:
    async with make_redis(max_connections=2) as r:
        sleepers = [
            asyncio.create_task(r.run("DEBUG", lambda c: c.execute_command("DEBUG", "SLEEP", "0.3"), idempotent=True))
            for _ in range(2)
        ]
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        with pytest.raises(PoolExhaustedError) as info:
            await r.get("k")
        assert time.perf_counter() - t0 < 0.2  # no wait, no retry
        assert info.value.may_have_been_applied is False
        assert info.value.attempts == 1
        await asyncio.gather(*sleepers)
        assert r.breaker.failure_count == 0
        assert await r.get("k") is None
    assert sum(v for _, v in otel.points(names.CONNECTION_TIMEOUTS)) == 1


async def test_idle_pool_after_a_restart_reconnects_before_sending(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer, otel: Otel
) -> None:
    async with make_redis(max_connections=4) as r:
        await asyncio.gather(*(r.incr("warm") for _ in range(4)))  # several idle pooled connections
        await asyncio.to_thread(redis_server.restart, "kill")
        await asyncio.sleep(0.05)
        for expected in (1, 2, 3, 4, 5):  # never OutcomeUnknownError: dead connections are detected unsent
            assert await r.incr("n") == expected
    assert _retries(otel) == 0


async def test_frozen_server_times_out_within_the_deadline_and_recovers(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    fast = {"max_attempts": 5, "initial_backoff": 0.02, "max_backoff": 0.05, "deadline": 1.0}
    async with make_redis(socket_timeout=0.3, retry=fast, breaker={"fail_max": 10}) as r:
        await r.set("k", "v")
        await asyncio.to_thread(redis_server.freeze)
        try:
            with pytest.raises(OutcomeUnknownError):
                await r.incr("n")  # sent on the pooled connection, then timed out: not re-sent
            t0 = time.monotonic()
            with pytest.raises(ServiceUnavailableError) as read_err:
                await r.get("k")  # new connections time out in the handshake: never sent, retried
            assert time.monotonic() - t0 < 1.5
            assert read_err.value.attempts >= 2
        finally:
            await asyncio.to_thread(redis_server.thaw)
        assert await r.get("k") == b"v"
        assert await r.get("n") == b"1"  # the timed-out INCR was applied once, when the server woke up

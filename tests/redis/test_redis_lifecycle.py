"""RedisClient lifecycle: the audit's __aenter__ bug, get-or-create, bounded close, reuse, no PING, config errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import redis.exceptions as rex
from pydantic import ValidationError
from redis_testing import CLIENT_NAME, SECRET

from support.leaks import eventually, redis_client_count
from support.servers import RedisServer
from trading_shared import (
    CircuitOpenError,
    ConfigurationError,
    CustomRedisClient,
    RedisClient,
    RedisSettings,
    ServiceUnavailableError,
)
from trading_shared.telemetry import names


async def test_async_with_connects_and_closes(make_redis: Callable[..., RedisClient], redis_url: str) -> None:
    async with make_redis() as r:
        assert await r.set("k", b"v") is True
        assert await r.get("k") == b"v"
        assert r.connection_pool is not None
        assert await redis_client_count(redis_url, CLIENT_NAME) >= 1
    assert r.connection_pool is None

    async def gone() -> bool:
        return await redis_client_count(redis_url, CLIENT_NAME) == 0

    assert await eventually(gone)


async def test_concurrent_connects_share_one_pool(make_redis: Callable[..., RedisClient]) -> None:
    r = make_redis()
    try:
        results = await asyncio.gather(*(r.connect() for _ in range(10)))
        assert all(c is r for c in results)
        pool = r.connection_pool
        await asyncio.gather(*(r.get(f"k{i}") for i in range(20)))
        assert r.connection_pool is pool
    finally:
        await r.close()


async def test_two_clients_share_no_breaker_and_no_connection(make_redis: Callable[..., RedisClient]) -> None:
    """Observable, not identities: a's open breaker does not reject b's calls, and closing a leaves b's connection
    (and its server-side client) working."""
    async with make_redis(breaker={"fail_max": 1, "reset_timeout": 30}) as a, make_redis() as b:
        await a.set("k", b"1")
        await b.set("k", b"1")
        a.breaker.record_failure(a.breaker.admit("test"))  # one failed call, fail_max=1: a's breaker opens
        with pytest.raises(CircuitOpenError):
            await a.get("k")
        assert await b.get("k") == b"1"  # b's breaker is its own
        b_pool = b.connection_pool
        assert b_pool is not None
        in_b = b_pool.get_connection_count()[0]
        await a.close()
        assert await b.get("k") == b"1"  # b's connections survived a's close
        assert b_pool.get_connection_count()[0] == in_b


async def test_close_is_idempotent_and_reuse_after_close_reconnects(make_redis: Callable[..., RedisClient]) -> None:
    r = make_redis()
    await r.close()  # never connected
    await r.connect()
    await r.close()
    await r.close()
    assert await r.incr("n") == 1  # any call connects again
    assert repr(r).endswith(" connected>") and "not connected" not in repr(r)
    await r.close()
    assert repr(r).endswith(" not connected>")


async def test_close_is_bounded_while_a_blocking_read_is_in_flight(make_redis: Callable[..., RedisClient]) -> None:
    r = make_redis()
    waiter = asyncio.create_task(r.brpop("empty-queue", 5.0))
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await r.close(timeout=0.5)
    assert time.monotonic() - t0 < 1.0
    with pytest.raises((RuntimeError, ServiceUnavailableError)):
        await waiter  # its connection was closed under it; it is not re-sent to a closed client


async def test_custom_redis_client_is_a_deprecated_alias(redis_url: str) -> None:
    with pytest.warns(DeprecationWarning, match="RedisClient"):
        r = CustomRedisClient(RedisSettings(url=redis_url))
    assert isinstance(r, RedisClient)
    async with r:
        assert await r.get("nothing") is None


async def test_driver_retries_and_health_checks_are_off(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        pool = r.connection_pool
        assert pool is not None
        conn = await pool.get_connection()
        try:
            assert conn.retry.get_retries() == 0
            assert conn.health_check_interval == 0
            assert conn.encoder.decode_responses is False
        finally:
            await pool.release(conn)


def _ping_calls(server: RedisServer) -> int:
    for line in server.cli("INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_ping:"):
            return int(line.split("calls=", 1)[1].split(",", 1)[0])
    return 0


async def test_a_thousand_gets_send_no_ping(make_redis: Callable[..., RedisClient], redis_server: RedisServer) -> None:
    async with make_redis() as r:
        await r.set("k", "v")
        before = _ping_calls(redis_server)
        for _ in range(1000):
            assert await r.get("k") == b"v"
        assert _ping_calls(redis_server) == before


async def test_wrong_password_fails_fast_without_retry_and_breaker_closed(secured_redis: RedisServer) -> None:
    r = RedisClient(RedisSettings(url=secured_redis.url(password="not-the-password"), breaker={"fail_max": 1}))
    t0 = time.monotonic()
    with pytest.raises(rex.AuthenticationError) as info:
        await r.connect()
    assert time.monotonic() - t0 < 0.5
    assert not isinstance(info.value, ServiceUnavailableError)
    assert "not-the-password" not in str(info.value)
    assert r.breaker.state.value == "closed"
    assert r.breaker.failure_count == 0
    await r.close()


async def test_missing_password_fails_fast(secured_redis: RedisServer) -> None:
    r = RedisClient(RedisSettings(url=secured_redis.url(password=""), breaker={"fail_max": 1}))
    t0 = time.monotonic()
    with pytest.raises(rex.AuthenticationError):
        await r.get("k")
    assert time.monotonic() - t0 < 0.5
    assert r.breaker.state.value == "closed"
    await r.close()


async def test_password_setting_overrides_the_url(secured_redis: RedisServer) -> None:
    settings = RedisSettings(url=secured_redis.url(password="wrong"), password=SECRET)
    async with RedisClient(settings) as r:
        assert await r.set("k", 1)
        assert SECRET not in repr(r) and SECRET not in repr(r.connection_pool)


@pytest.mark.parametrize(
    "url",
    ["redis://h:notaport/0", "redis://h:6379/abc", "http://h:6379/0", "redis://h:99999/0"],
)
def test_malformed_url_fails_at_construction(url: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ValidationError):
        RedisClient(RedisSettings(url=url))
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize(
    "query",
    [
        "health_check_interval=5",  # would PING before commands
        "retry_on_timeout=yes",  # would bring back a driver retry layer
        "socket_timeout=3",  # a RedisSettings field
        "max_connections=3",
        "protocol=3",
        "no_such_option=1",
        "db=notanumber",
        "ssl_cert_reqs=none",  # ssl options on redis://
    ],
)
def test_unsupported_url_options_are_configuration_errors(query: str) -> None:
    url = f"redis://:{SECRET}@127.0.0.1:6379/0?{query}"
    with pytest.raises(ConfigurationError) as info:
        RedisClient(RedisSettings(url=url))
    assert SECRET not in str(info.value)


async def test_unknown_host_fails_fast_without_retry() -> None:
    r = RedisClient(RedisSettings(url="redis://-no-such-host.invalid:6379/0", breaker={"fail_max": 1}))
    t0 = time.monotonic()
    with pytest.raises(rex.ConnectionError) as info:
        await r.connect()
    assert not isinstance(info.value, ServiceUnavailableError)
    assert time.monotonic() - t0 < 2.0
    assert r.breaker.state.value == "closed"
    await r.close()


async def test_server_down_at_connect_is_retried_then_a_connection_error(redis_server: RedisServer) -> None:
    settings = RedisSettings(
        url=redis_server.url(),
        retry={"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 2},
    )
    await asyncio.to_thread(redis_server.stop)
    r = RedisClient(settings)
    with pytest.raises(ConnectionError) as info:
        await r.connect()
    assert isinstance(info.value, ServiceUnavailableError)
    assert info.value.attempts == 3
    assert info.value.may_have_been_applied is False
    assert isinstance(info.value.__cause__, rex.ConnectionError)
    await r.close()


async def test_pool_metrics_come_from_the_redis_pool(make_redis: Callable[..., RedisClient], otel: object) -> None:
    from support.otel import Otel

    assert isinstance(otel, Otel)
    async with make_redis(max_connections=7) as r:
        await asyncio.gather(*(r.get("k") for _ in range(5)))
        counts = {a[names.CONNECTION_STATE]: v for a, v in otel.points(names.CONNECTION_COUNT)}
        assert counts[names.STATE_USED] == 0
        assert counts[names.STATE_IDLE] >= 1
        assert [v for _, v in otel.points(names.CONNECTION_MAX)] == [7]
        assert [v for _, v in otel.points(names.CONNECTION_PENDING_REQUESTS)] == [0]
        assert sum(v for _, v in otel.points(names.CONNECTION_CREATE_TIME)) >= 1


async def test_missing_tls_ca_file_fails_fast_without_retry(redis_server: RedisServer) -> None:
    url = f"rediss://{redis_server.host}:{redis_server.port}/0?ssl_ca_certs=/nonexistent/ca.pem"
    r = RedisClient(RedisSettings(url=url, breaker={"fail_max": 1}, retry={"initial_backoff": 0.2}))
    for _ in range(2):
        t0 = time.monotonic()
        with pytest.raises(rex.ConnectionError) as info:
            await r.get("k")
        assert not isinstance(info.value, ServiceUnavailableError)
        assert time.monotonic() - t0 < 0.2  # no backoff: not retried
    assert r.breaker.state.value == "closed"
    await r.close()

"""Fixtures for RedisClient tests: short fault timeouts, in-memory telemetry, a fault proxy, a secured server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from redis_testing import FAST, SECRET

from support.otel import Otel
from support.proxy import FaultProxy
from support.servers import RedisServer, ServerError
from trading_shared import RedisClient, RedisSettings


@pytest.fixture
def otel() -> Iterator[Otel]:
    capture = Otel()
    yield capture
    capture.shutdown()


@pytest.fixture
def make_redis(redis_url: str, otel: Otel) -> Callable[..., RedisClient]:
    """Build a client on the private Redis (db 0, flushed) with fast fault settings; kwargs override settings."""

    def make(**overrides: Any) -> RedisClient:
        values: dict[str, Any] = {"url": redis_url, **FAST, **overrides}
        return RedisClient(RedisSettings(**values), **otel.providers())

    return make


@pytest.fixture
async def proxy(redis_server: RedisServer, redis_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the private Redis (db flushed)."""
    fault_proxy = await FaultProxy.start(redis_server.host, redis_server.port)
    yield fault_proxy
    await fault_proxy.close()


@pytest.fixture
def make_proxied(proxy: FaultProxy, otel: Otel) -> Callable[..., RedisClient]:
    """Build a client that talks to the private Redis through :func:`proxy`."""

    def make(**overrides: Any) -> RedisClient:
        values: dict[str, Any] = {"url": f"redis://{proxy.host}:{proxy.port}/0", **FAST, **overrides}
        return RedisClient(RedisSettings(**values), **otel.providers())

    return make


@pytest.fixture(scope="module")
def secured_redis() -> Iterator[RedisServer]:
    """A second private redis-server that requires the password :data:`SECRET`."""
    server = RedisServer(password=SECRET)
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start a secured redis-server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.cleanup()

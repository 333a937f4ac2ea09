"""Fixtures for the contract tests: an SDK client as the replaced client's callers hold it, a plain redis-py
connection to check effects, and a fault proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from compat_testing import FAST

from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import RedisClient, RedisSettings


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[RedisClient]:
    """The SDK client the old callers get (db 0 of the private Redis, flushed)."""
    r = RedisClient(RedisSettings(url=redis_url, **FAST))
    yield r
    await r.close()


@pytest.fixture
async def plain(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A separate plain redis-py connection, to check what a call did."""
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def proxied(redis_server: RedisServer, redis_url: str) -> AsyncIterator[tuple[RedisClient, FaultProxy]]:
    """A client talking to the private Redis through a fault proxy."""
    proxy = await FaultProxy.start(redis_server.host, redis_server.port)
    r = RedisClient(RedisSettings(url=f"redis://{proxy.host}:{proxy.port}/0", **FAST))
    yield r, proxy
    await r.close()
    await proxy.close()

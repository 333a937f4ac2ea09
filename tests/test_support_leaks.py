"""The leak-check helpers count what they claim to count."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import redis.asyncio as aioredis

from support.leaks import drain_pending_tasks, eventually, pending_tasks, pg_backend_count, redis_client_count


async def test_pg_backend_count(pg_dsn: str) -> None:
    app = f"leak-{uuid.uuid4().hex[:8]}"
    conns = [await asyncpg.connect(pg_dsn, server_settings={"application_name": app}) for _ in range(2)]
    try:
        assert await pg_backend_count(pg_dsn, app) == 2
        await conns[0].close()
        assert await eventually(lambda: _pg_count_is(pg_dsn, app, 1))
    finally:
        for conn in conns:
            await conn.close()
    assert await eventually(lambda: _pg_count_is(pg_dsn, app, 0))


async def test_redis_client_count(redis_url: str) -> None:
    name = f"leak-{uuid.uuid4().hex[:8]}"
    clients = [aioredis.from_url(redis_url, client_name=name) for _ in range(2)]
    try:
        for client in clients:
            await client.ping()
        assert await redis_client_count(redis_url, name) == 2
        await clients[0].aclose()
        assert await eventually(lambda: _redis_count_is(redis_url, name, 1))
    finally:
        for client in clients:
            await client.aclose()
    assert await eventually(lambda: _redis_count_is(redis_url, name, 0))


async def test_pending_tasks_and_drain() -> None:
    assert pending_tasks() == []
    quick = asyncio.create_task(asyncio.sleep(0.05))
    stuck = asyncio.create_task(asyncio.sleep(3600))
    assert set(pending_tasks()) == {quick, stuck}
    leaked = await drain_pending_tasks(grace=0.2)
    assert leaked == [stuck]  # the quick one finished within the grace period
    assert stuck.cancelled()
    assert pending_tasks() == []


async def _pg_count_is(dsn: str, app: str, expected: int) -> bool:
    return await pg_backend_count(dsn, app) == expected


async def _redis_count_is(url: str, name: str, expected: int) -> bool:
    return await redis_client_count(url, name) == expected

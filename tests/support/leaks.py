"""Leak-check helpers: server-side connection counts and pending asyncio tasks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as aioredis

CHECKER_NAME = "ts-leak-check"


async def pg_backend_count(dsn: str, application_name: str) -> int:
    """Number of server backends whose ``application_name`` is the given one (pg_stat_activity).

    Opens (and closes) its own connection, named ``ts-leak-check`` and not counted.
    """
    conn = await asyncpg.connect(dsn, timeout=5, server_settings={"application_name": CHECKER_NAME})
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND pid <> pg_backend_pid()",
            application_name,
        )
    finally:
        await conn.close()
    return count


async def redis_client_count(url: str, name: str) -> int:
    """Number of connections whose CLIENT SETNAME is ``name`` (CLIENT LIST), not counting the checker's own."""
    client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        clients = await client.client_list()
    finally:
        await client.aclose()
    return sum(1 for c in clients if c.get("name") == name)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 2.0, interval: float = 0.02) -> bool:
    """Await ``check()`` until it returns True or ``timeout`` passes; return its last result.

    Server-side counts lag a little behind a client's close (the backend exits asynchronously).
    """
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


def pending_tasks() -> list[asyncio.Task[object]]:
    """Tasks of the running loop that are not done, except the current one."""
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


async def drain_pending_tasks(grace: float = 0.2) -> list[asyncio.Task[object]]:
    """Give pending tasks ``grace`` seconds to finish; cancel and await the rest and return them.

    Used by the autouse "no stray tasks" fixture: a non-empty result means the test leaked tasks.
    """
    await asyncio.sleep(0)
    left = pending_tasks()
    if left:
        await asyncio.wait(left, timeout=grace)
        left = pending_tasks()
    if left:
        for task in left:
            task.cancel()
        await asyncio.wait(left, timeout=2)
    return left


def describe_tasks(tasks: list[asyncio.Task[object]]) -> str:
    """One line per task: name and the coroutine it runs (for failure messages)."""
    return "\n".join(f"  {t.get_name()}: {t.get_coro()!r}" for t in tasks)

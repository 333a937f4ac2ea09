"""PostgresClient lifecycle: the audit's __aenter__ bug, get-or-create, idempotent bounded close, reuse."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import asyncpg
import pytest

from support.leaks import pg_backend_count
from support.servers import SECURED_PASSWORD, SECURED_ROLE, PostgresServer
from trading_shared import PostgresClient, PostgresSettings, ServiceUnavailableError


async def test_async_with_connects_and_closes(make_pg: Callable[..., PostgresClient], pg_dsn: str) -> None:
    async with make_pg() as pg:
        assert await pg.fetchval("SELECT 40 + $1::int", 2) == 42
        assert pg.pool is not None
        assert await pg_backend_count(pg_dsn, "ts-test") >= 1
    assert pg.pool is None
    for _ in range(50):
        if await pg_backend_count(pg_dsn, "ts-test") == 0:
            break
        await asyncio.sleep(0.02)
    assert await pg_backend_count(pg_dsn, "ts-test") == 0


async def test_concurrent_connects_share_one_pool(make_pg: Callable[..., PostgresClient]) -> None:
    pg = make_pg()
    try:
        results = await asyncio.gather(*(pg.connect() for _ in range(10)))
        assert all(r is pg for r in results)
        pools = {id(pg.pool)}
        await asyncio.gather(*(pg.fetchval("SELECT 1") for _ in range(20)))
        pools.add(id(pg.pool))
        assert len(pools) == 1
    finally:
        await pg.close()


async def test_two_clients_share_nothing(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as a, make_pg() as b:
        assert a.pool is not b.pool
        assert a.breaker is not b.breaker


async def test_close_is_idempotent_and_reuse_after_close_reconnects(make_pg: Callable[..., PostgresClient]) -> None:
    pg = make_pg()
    await pg.close()  # never connected
    await pg.connect()
    await pg.close()
    await pg.close()
    assert await pg.fetchval("SELECT 7") == 7  # any call connects again
    await pg.close()


async def test_close_is_bounded_with_a_connection_still_borrowed(make_pg: Callable[..., PostgresClient]) -> None:
    pg = make_pg()
    started = asyncio.Event()

    async def hold(conn: asyncpg.Connection) -> None:
        started.set()
        await asyncio.sleep(30)

    holder = asyncio.create_task(pg.run("hold", hold, True))
    await started.wait()
    t0 = time.monotonic()
    await pg.close(timeout=0.5)
    assert time.monotonic() - t0 < 2.0
    holder.cancel()
    with pytest.raises((asyncio.CancelledError, Exception)):
        await holder


async def test_start_pool_is_a_deprecated_alias(make_pg: Callable[..., PostgresClient]) -> None:
    pg = make_pg()
    with pytest.warns(DeprecationWarning, match="connect"):
        pool = await pg.start_pool()
    assert pool is pg.pool
    await pg.close()


async def test_wrong_password_fails_fast_without_retry_and_breaker_closed(pg_server: PostgresServer) -> None:
    pg_server.set_password(SECURED_ROLE, SECURED_PASSWORD)
    pg_server.require_password(SECURED_ROLE)
    settings = PostgresSettings(dsn=pg_server.dsn(user=SECURED_ROLE, password="wrong"), breaker={"fail_max": 1})
    pg = PostgresClient(settings)
    t0 = time.monotonic()
    with pytest.raises(asyncpg.InvalidPasswordError) as info:
        await pg.connect()
    assert time.monotonic() - t0 < 1.0
    assert "wrong" not in str(info.value)
    assert pg.breaker.state.value == "closed"
    await pg.close()


async def test_unknown_host_fails_fast_without_retry() -> None:
    pg = PostgresClient(PostgresSettings(host="-no-such-host.invalid", breaker={"fail_max": 1}))
    t0 = time.monotonic()
    with pytest.raises(socket.gaierror) as info:
        await pg.connect()
    assert not isinstance(info.value, ServiceUnavailableError)
    assert time.monotonic() - t0 < 2.0
    assert pg.breaker.state.value == "closed"
    await pg.close()


async def test_server_down_at_connect_is_retried_then_a_connection_error(pg_server: PostgresServer) -> None:
    settings = PostgresSettings(
        host="127.0.0.1",
        port=pg_server.port + 0,
        retry={"max_attempts": 3, "initial_backoff": 0.01, "max_backoff": 0.02, "deadline": 3},
    )
    await asyncio.to_thread(pg_server.stop)
    pg = PostgresClient(settings)
    with pytest.raises(ConnectionError) as info:
        await pg.connect()
    assert isinstance(info.value, ServiceUnavailableError)
    assert info.value.attempts == 3
    assert info.value.may_have_been_applied is False
    assert isinstance(info.value.__cause__, OSError)
    await pg.close()

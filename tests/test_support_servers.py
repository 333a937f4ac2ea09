"""The private PostgreSQL/Redis servers and their fault injection work as documented."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from support.servers import SECURED_PASSWORD, SECURED_ROLE, PostgresServer, RedisServer, RestartMode, free_port


async def _fetch(dsn: str, sql: str, timeout: float = 5) -> object:
    conn = await asyncpg.connect(dsn, timeout=timeout)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# ----------------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("mode", ["fast", "immediate", "kill"])
async def test_pg_restart_keeps_port_and_data(pg_server: PostgresServer, pg_dsn: str, mode: RestartMode) -> None:
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (42)")
    port = pg_server.port

    await asyncio.to_thread(pg_server.restart, mode)

    assert pg_server.port == port
    assert pg_server.running
    # The old connection is dead (asyncpg noticed the EOF while idle: "connection is closed").
    with pytest.raises((asyncpg.InterfaceError, asyncpg.PostgresConnectionError)):
        await conn.fetchval("SELECT 1")
    await conn.close()
    assert await _fetch(pg_dsn, "SELECT x FROM t") == 42


async def test_pg_stopped_refuses_connections(pg_server: PostgresServer, pg_dsn: str) -> None:
    await asyncio.to_thread(pg_server.stop)
    assert not pg_server.running
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(pg_dsn, timeout=2)
    # Left stopped on purpose: pg_dsn's teardown and the next test's fixtures must bring it back.


async def test_pg_freeze_times_out_connect_and_thaw_resumes(pg_server: PostgresServer, pg_dsn: str) -> None:
    await asyncio.to_thread(pg_server.freeze)
    try:
        assert pg_server.frozen
        with pytest.raises(TimeoutError):
            await asyncpg.connect(pg_dsn, timeout=0.3)
        waiting = asyncio.ensure_future(_fetch(pg_dsn, "SELECT 7", timeout=10))
        await asyncio.sleep(0.3)
        assert not waiting.done()
    finally:
        await asyncio.to_thread(pg_server.thaw)
    assert not pg_server.frozen
    assert await asyncio.wait_for(waiting, 5) == 7


def test_pg_ensure_running_repairs_frozen_and_killed(pg_server: PostgresServer) -> None:
    pg_server.freeze()
    pg_server.ensure_running()
    assert pg_server.psql("SELECT 1", timeout=5) == "1"
    pg_server.kill()
    assert not pg_server.running
    pg_server.ensure_running()
    assert pg_server.psql("SELECT 2", timeout=5) == "2"


def test_pg_kill_postmaster_only_then_start(pg_server: PostgresServer) -> None:
    backends = pg_server.psql("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
    assert backends == "1"
    pg_server.kill(children=False)  # orphaned children exit by themselves; start() waits for them
    pg_server.start()
    assert pg_server.psql("SELECT 1") == "1"


async def test_readonly_pg_dsn_smoke(readonly_pg_dsn: str) -> None:
    assert int(str(await _fetch(readonly_pg_dsn, "SHOW server_version_num"))) >= 150000


async def test_pg_password_auth(pg_server: PostgresServer) -> None:
    assert await _fetch(pg_server.dsn(user=SECURED_ROLE, password=SECURED_PASSWORD), "SELECT current_user") == "secured"
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg_server.dsn(user=SECURED_ROLE, password="wrong"))
    role = f"r_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(pg_server.set_password, role, "s3cret")
    assert await _fetch(pg_server.dsn(user=role), "SELECT 1") == 1  # trust until required
    await asyncio.to_thread(pg_server.require_password, role)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg_server.dsn(user=role))
    assert await _fetch(pg_server.dsn(user=role, password="s3cret"), "SELECT 1") == 1


def test_pg_dsn_is_a_fresh_database(pg_server: PostgresServer, pg_dsn: str) -> None:
    db = pg_dsn.rsplit("/", 1)[1]
    assert pg_server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", db=db) == "0"
    assert pg_server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'") == "1"


# ----------------------------------------------------------------------------------------------- Redis


async def test_redis_restart_keeps_port_and_loses_data(redis_server: RedisServer, redis_url: str) -> None:
    redis_server.cli("SET", "k", "v")
    port = redis_server.port
    await asyncio.to_thread(redis_server.restart)
    assert redis_server.port == port
    assert redis_server.cli("GET", "k") is None  # --save "": nothing persisted


async def test_redis_kill_and_start(redis_server: RedisServer, redis_url: str) -> None:
    client = aioredis.from_url(redis_url, socket_timeout=2)
    try:
        assert await client.ping()
        await asyncio.to_thread(redis_server.kill)
        with pytest.raises(redis.ConnectionError):
            await client.ping()
        await asyncio.to_thread(redis_server.start)
        assert await client.ping()
    finally:
        await client.aclose()


async def test_redis_freeze_and_thaw(redis_server: RedisServer, redis_url: str) -> None:
    client = aioredis.from_url(redis_url, socket_timeout=0.3)
    try:
        await asyncio.to_thread(redis_server.freeze)
        try:
            assert redis_server.frozen
            with pytest.raises(redis.TimeoutError):
                await client.ping()
        finally:
            await asyncio.to_thread(redis_server.thaw)
        assert await client.ping()
    finally:
        await client.aclose()


def test_redis_ensure_running_repairs_reconfigured_server(redis_server: RedisServer) -> None:
    redis_server.cli("CONFIG", "SET", "requirepass", "changed-by-a-test")
    redis_server.freeze()
    redis_server.ensure_running()
    assert redis_server.cli("PING") == "PONG"
    assert redis_server.cli("CONFIG", "GET", "requirepass") == ["requirepass", ""]


async def test_redis_password_server() -> None:
    server = RedisServer(password="pw")
    await asyncio.to_thread(server.start)
    client = aioredis.from_url(server.url(), socket_timeout=2)
    wrong = aioredis.from_url(server.url(password="wrong"), socket_timeout=2)
    try:
        assert await client.ping()
        with pytest.raises(redis.AuthenticationError):
            await wrong.ping()
    finally:
        await client.aclose()
        await wrong.aclose()
        await asyncio.to_thread(server.cleanup)
    assert not server.running


def test_free_port_is_outside_ephemeral_range_and_unique() -> None:
    low, _high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert all(20000 <= p < low for p in ports)

"""Every FaultProxy mode does what its docstring says."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis
import redis.asyncio as aioredis

from support.leaks import pending_tasks
from support.proxy import FaultProxy, ProxyMode
from support.servers import PostgresServer, RedisServer, free_port


@pytest.fixture
async def rproxy(redis_server: RedisServer, redis_url: str) -> AsyncIterator[FaultProxy]:
    """A proxy in front of the private Redis (db flushed)."""
    proxy = await FaultProxy.start(redis_server.host, redis_server.port)
    yield proxy
    await proxy.close()


def _client(proxy: FaultProxy, timeout: float = 1.0) -> aioredis.Redis:
    # from_url: no driver retries, so a lost reply is not silently re-sent.
    return aioredis.from_url(
        f"redis://{proxy.host}:{proxy.port}/0", socket_timeout=timeout, socket_connect_timeout=timeout
    )


async def _raw_ping(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    writer.write(b"PING\r\n")
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def test_pass_through_and_counters(rproxy: FaultProxy, redis_server: RedisServer) -> None:
    client = _client(rproxy)
    try:
        await client.set("k", "v")
        assert await client.get("k") == b"v"
        stats = rproxy.stats
        assert stats.connections_accepted == 1
        assert stats.connections_active == 1
        assert stats.bytes_to_server > 0
        assert stats.bytes_to_client > 0
    finally:
        await client.aclose()
    await asyncio.sleep(0.05)
    assert rproxy.stats.connections_active == 0


async def test_latency_delays_both_ways(rproxy: FaultProxy) -> None:
    client = _client(rproxy)
    try:
        await client.ping()
        rproxy.latency(0.1)
        started = time.monotonic()
        await client.ping()
        assert 0.2 <= time.monotonic() - started < 0.6
        rproxy.pass_through()
        started = time.monotonic()
        await client.ping()
        assert time.monotonic() - started < 0.2
    finally:
        await client.aclose()


@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_large_payloads_keep_order_and_size(rproxy: FaultProxy, delay: float) -> None:
    rproxy.latency(delay)
    payload = bytes(range(256)) * 8192  # 2 MiB: exercises flow control and the latency queue's high-water mark
    client = _client(rproxy, timeout=5)
    try:
        await client.set("big", payload)
        assert await client.get("big") == payload
    finally:
        await client.aclose()
    assert rproxy.stats.bytes_to_server > len(payload)
    assert rproxy.stats.bytes_to_client > len(payload)


async def test_blackhole_stalls_existing_and_new_connections(rproxy: FaultProxy, redis_server: RedisServer) -> None:
    reader, writer = await _raw_ping(rproxy)
    assert await reader.readline() == b"+PONG\r\n"
    upstream_before = len(redis_server.cli("CLIENT", "LIST").splitlines())
    rproxy.blackhole()
    try:
        writer.write(b"PING\r\n")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readline(), 0.2)  # nothing comes back ...
        new_reader, new_writer = await _raw_ping(rproxy)  # ... and a new connection is accepted, not connected
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(new_reader.readline(), 0.2)
        assert rproxy.stats.connections_accepted == 2
        assert len(redis_server.cli("CLIENT", "LIST").splitlines()) == upstream_before
        rproxy.pass_through()  # healed: held bytes flow, like TCP retransmission after a partition
        assert await asyncio.wait_for(reader.readline(), 2) == b"+PONG\r\n"
        assert await asyncio.wait_for(new_reader.readline(), 2) == b"+PONG\r\n"
        await _close(new_writer)
    finally:
        await _close(writer)


async def test_blackhole_times_out_a_driver(rproxy: FaultProxy) -> None:
    client = _client(rproxy, timeout=0.3)
    try:
        await client.ping()
        rproxy.blackhole()
        with pytest.raises(redis.TimeoutError):
            await client.ping()
        rproxy.pass_through()
        assert await client.ping()
    finally:
        await client.aclose()


async def test_reset_aborts_with_rst_until_mode_changes(rproxy: FaultProxy) -> None:
    reader, writer = await _raw_ping(rproxy)
    assert await reader.readline() == b"+PONG\r\n"
    client = _client(rproxy)
    try:
        await client.ping()
        rproxy.reset()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 2)  # RST, not a clean EOF
        with pytest.raises(redis.ConnectionError):
            await client.ping()  # existing pooled connection
        with pytest.raises(redis.ConnectionError):
            await client.ping()  # new connection
        assert rproxy.stats.connections_reset >= 3
        rproxy.pass_through()
        assert await client.ping()
    finally:
        await client.aclose()
        await _close(writer)


async def test_lose_next_reply_applies_request_but_client_fails(rproxy: FaultProxy, redis_server: RedisServer) -> None:
    client = _client(rproxy)
    try:
        await client.ping()  # connect (and handshake) first
        rproxy.lose_next_reply()
        with pytest.raises(redis.ConnectionError):
            await client.incr("n")
        assert redis_server.cli("GET", "n") == "1"  # applied once, reply lost
        assert rproxy.stats.replies_lost == 1
        assert rproxy.mode is ProxyMode.PASS_THROUGH  # one-shot
        assert await client.incr("n") == 2
    finally:
        await client.aclose()


async def test_lose_next_reply_with_asyncpg(pg_server: PostgresServer, pg_dsn: str) -> None:
    proxy = await FaultProxy.start(pg_server.host, pg_server.port)
    conn = await asyncpg.connect(pg_dsn.replace(f":{pg_server.port}/", f":{proxy.port}/"))
    try:
        await conn.execute("CREATE TABLE t (x int)")
        proxy.lose_next_reply()
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await conn.execute("INSERT INTO t VALUES (1)")  # simple query protocol: one chunk
        db = pg_dsn.rsplit("/", 1)[1]
        assert await asyncio.to_thread(pg_server.psql, "SELECT count(*) FROM t", db) == "1"
    finally:
        await conn.close()
        await proxy.close()


async def test_upstream_refused_resets_client_and_close_leaves_nothing() -> None:
    proxy = await FaultProxy.start("127.0.0.1", free_port())  # nothing listens there
    try:
        reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 2)
        await _close(writer)
        proxy.blackhole()
        _held_reader, held_writer = await asyncio.open_connection(proxy.host, proxy.port)
        await asyncio.sleep(0.01)
        assert proxy.stats.connections_active == 1
    finally:
        await proxy.close()
    await _close(held_writer)
    assert proxy.stats.connections_active == 0
    assert pending_tasks() == []
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(proxy.host, proxy.port)

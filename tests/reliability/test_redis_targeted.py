"""Targeted Redis faults: the reply to one chosen write is lost after the server applied it (FaultProxy).

For each write path the proxy drops the reply to exactly that command and resets the connection, so the server did
apply it. Paths documented as safe to re-send must be re-sent and succeed without a duplicate; the others must not
be re-sent and must say so (OutcomeUnknownError). Then a refused write (-LOADING) is retried even when it is not
idempotent, because the server refused it without applying it (counted by the server's own command stats).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
import redis.exceptions as rex

from trading_shared import OutcomeUnknownError, RedisClient, ServiceUnavailableError
from trading_shared.telemetry import names

from .faults import ids_in
from .harness import RedisEnv, count_fault, wait_for_aof_rewrite, wait_until_loading
from .history import LEDGER, History, Outcome, check, check_counter
from .test_redis_history import PATHS

#: path -> whether a lost reply is re-sent (idempotent by construction) or reported as OutcomeUnknownError.
RESENT = {
    "redis.set": True,
    "redis.incr": False,
    "redis.lpush": False,
    "redis.xadd": False,
    "redis.xadd_explicit_id": True,
    "redis.xadd_bulk": True,
}


async def _idle(client: RedisClient) -> None:
    """Wait until no pooled connection is in use: the next chunk on the wire is the next command."""
    pool = client.connection_pool
    assert pool is not None
    for _ in range(200):
        if pool.get_connection_count()[1][0] == 0:
            return
        await asyncio.sleep(0.005)
    raise AssertionError("a connection stayed in use")


@pytest.mark.parametrize("path_name", list(RESENT))
async def test_redis_lost_reply_on_each_write_path(redis_env: RedisEnv, path_name: str) -> None:
    path = next(p for p in PATHS if p.name == path_name)
    proxy = await redis_env.proxy()
    client = redis_env.client(proxy, max_connections=1)
    write: Callable[[list[str]], Awaitable[object]] = path.make_write(client, 0)
    history = History(f"{path_name}.lost_reply")
    cut: list[str] = []
    cut_calls: list[list[str]] = []
    for _ in range(5):
        # A lost reply kills the connection: reconnect (and load any script) with a write of its own first.
        warm = history.new_ids(path.batch)
        await history.call(warm, lambda warm=warm: write(warm))
        await _idle(client)
        proxy.lose_next_reply()
        count_fault("redis.reply_lost")
        ids = history.new_ids(path.batch)
        cut += ids
        cut_calls.append(ids)
        await history.call(ids, lambda ids=ids: write(ids))
    assert proxy.stats.replies_lost == 5
    lost = ids_in(proxy.lost_requests)  # the ids in the requests whose replies the proxy dropped
    assert lost <= set(cut), "a reply of a warm-up write was lost"
    assert all(lost & set(ids) for ids in cut_calls), "some write under test had no reply lost"
    assert all(r.outcome is not Outcome.FAIL for r in history.records)  # warm-ups included
    infos = history.outcomes()[Outcome.INFO]
    assert infos == (0 if RESENT[path_name] else 5 * path.batch), history.errors()
    await redis_env.close_all()
    raw = redis_env.raw()
    try:
        seen = await path.read(raw)
    finally:
        await raw.aclose()
    report = LEDGER.add(check(history, seen, keyed=path.keyed))
    report.assert_clean()
    assert report.indeterminate_applied == infos  # the proxy proves it: every lost reply was for an applied write
    assert sorted(seen) == sorted(r.id for r in history.records)  # exactly once each: warm-ups and cut writes


async def test_redis_refused_writes_are_retried_even_when_not_idempotent(redis_env: RedisEnv) -> None:
    """-LOADING means refused, not applied: INCR and LPUSH are retried through it, and applied exactly once."""
    client = redis_env.client(retry={"max_attempts": 20, "deadline": 5.0})
    history = History("redis.incr.loading")
    lists = History("redis.lpush.loading")
    await client.set("ballast-probe", b"1")
    await asyncio.to_thread(redis_env.server.cli, "DEBUG", "POPULATE", 300_000, "ballast", 64)
    await asyncio.to_thread(redis_env.server.cli, "BGREWRITEAOF")
    await wait_for_aof_rewrite(redis_env.server)
    old_pid = redis_env.server.pid
    restart = asyncio.create_task(asyncio.to_thread(redis_env.server.restart, "kill"))
    count_fault("redis.loading")

    await wait_until_loading(redis_env.server, old_pid)
    calls = []
    for _ in range(5):
        ids = lists.new_ids(1)
        calls.append(history.call(["n"], lambda: client.incr("n")))
        calls.append(lists.call(ids, lambda ids=ids: client.lpush("q", ids[0])))
    await asyncio.gather(*calls)
    await restart
    loading = [v for a, v in redis_env.otel.points(names.RETRIES) if a.get(names.ERROR_TYPE) == "BusyLoadingError"]
    assert sum(loading) > 0, "the writes never met -LOADING"
    assert history.outcomes() == {Outcome.OK: 5}
    assert lists.outcomes() == {Outcome.OK: 5}
    await redis_env.close_all()
    raw = redis_env.raw()
    try:
        counters = {"n": int(await raw.get("n") or 0)}
        queue = [v.decode() for v in await raw.lrange("q", 0, -1)]
    finally:
        await raw.aclose()
    LEDGER.add(check_counter(history, counters, applied={})).assert_clean()  # 5 acknowledged, none indeterminate
    LEDGER.add(check(lists, queue)).assert_clean()


#: DEBUG ERROR "<reply>" makes the server answer that error: refusals are retried (not applied, even for a
#: non-idempotent call), other error replies are the caller's and are raised unchanged after one attempt.
ERROR_REPLIES = {
    "LOADING Redis is loading the dataset in memory": True,
    "BUSY Redis is busy running a script": True,
    "READONLY You can't write against a read only replica": True,
    "TRYAGAIN Multiple keys request during rehashing of slot": True,
    "MASTERDOWN Link with MASTER is down": True,
    "WRONGTYPE Operation against a key holding the wrong kind of value": False,
    "NOGROUP No such key or consumer group": False,
    "ERR something else": False,
}


@pytest.mark.parametrize("reply", list(ERROR_REPLIES))
async def test_redis_error_replies_are_classified_by_code(redis_env: RedisEnv, reply: str) -> None:
    refused = ERROR_REPLIES[reply]
    attempts = 3
    client = redis_env.client(
        retry={"max_attempts": attempts, "initial_backoff": 0.001, "max_backoff": 0.001, "jitter": 0.0},
        breaker={"fail_max": 1, "reset_timeout": 30},
    )
    await client.connect()

    def debug_calls() -> int:
        info = str(redis_env.server.cli("INFO", "commandstats"))
        line = next((x for x in info.splitlines() if x.startswith("cmdstat_debug:")), "calls=0,")
        return int(line.split("calls=", 1)[1].split(",", 1)[0])

    before = await asyncio.to_thread(debug_calls)
    count_fault("redis.debug_error")
    with pytest.raises(Exception) as info:  # noqa: PT011 - the type is the point of the test, checked below
        await client.run("DEBUG", lambda c: c.execute_command("DEBUG", "ERROR", reply), idempotent=False)
    sent = await asyncio.to_thread(debug_calls) - before
    if refused:
        assert isinstance(info.value, ServiceUnavailableError) and not isinstance(info.value, OutcomeUnknownError)
        assert info.value.may_have_been_applied is False
        assert isinstance(info.value.__cause__, rex.RedisError)  # the server's error reply (LOADING: a ConnectionError)
        assert sent == attempts  # retried although not idempotent: the server refused it each time
        assert client.breaker.state.value == "open"  # one failed call, fail_max=1: the server is unavailable
    else:
        assert type(info.value) is rex.ResponseError or isinstance(info.value, rex.ResponseError)
        assert not isinstance(info.value, ServiceUnavailableError)
        assert sent == 1
        assert client.breaker.state.value == "closed" and client.breaker.failure_count == 0

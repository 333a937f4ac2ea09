"""Streams: bulk XADD without duplicates under a lost reply, dead-lettering, BulkWriteError, consumer groups."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex

from support.leaks import eventually
from support.otel import Otel
from support.proxy import FaultProxy
from support.servers import RedisServer
from trading_shared import BulkWriteError, OutcomeUnknownError, RedisClient
from trading_shared.redis import streams
from trading_shared.redis.classify import error_code
from trading_shared.telemetry import names


async def _all_entries(url: str, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    raw = aioredis.from_url(url)
    try:
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        start = "-"
        while True:
            batch = await raw.xrange(stream, min=start, count=10_000)
            if not batch:
                return out
            out += batch
            start = "(" + batch[-1][0].decode()
    finally:
        await raw.aclose()


async def test_bulk_100k_with_a_lost_reply_in_the_middle_lands_exactly_once_in_order(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str, otel: Otel
) -> None:
    total = 100_000
    messages = [{"seq": i, "sym": "BTC-USD", "px": 101.25, "raw": b"\x00\xff"} for i in range(total)]
    # Generous timeouts: 1,000-message chunks through the proxy on a loaded 2-core machine can take over a second.
    patient = {"max_attempts": 4, "initial_backoff": 0.02, "max_backoff": 0.1, "deadline": 20.0}
    async with make_proxied(socket_timeout=5.0, retry=patient) as r:
        task = asyncio.create_task(r.xadd_bulk("md:trades", messages, chunk_size=1000))
        raw = aioredis.from_url(redis_url)

        async def half_written() -> bool:
            return int(await raw.xlen("md:trades")) >= total // 2

        try:
            assert await eventually(half_written, timeout=30, interval=0.005)
        finally:
            await raw.aclose()
        proxy.lose_next_reply()
        assert await task == total
    assert proxy.stats.replies_lost == 1
    assert sum(v for _, v in otel.points(names.RETRIES)) >= 1  # the chunk whose reply was lost was re-sent
    entries = await _all_entries(redis_url, "md:trades")
    seqs = [int(fields[b"seq"]) for _, fields in entries]
    assert seqs == list(range(total))  # lost = 0, duplicated = 0, in order
    assert all(fields[b"raw"] == b"\x00\xff" for _, fields in entries[:10])
    ids = [entry_id for entry_id, _ in entries]
    assert len(set(ids)) == total


async def test_bulk_with_the_server_down_names_every_message_not_written(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    async with make_redis() as r:
        await asyncio.to_thread(redis_server.stop)
        with pytest.raises(BulkWriteError) as info:
            await r.xadd_bulk("md:quotes", [{"i": i} for i in range(1000)], chunk_size=100)
    err = info.value
    assert isinstance(err, ConnectionError)
    assert err.not_written == tuple(range(1000))
    assert err.outcome_unknown == ()
    assert err.dead_lettered == ()
    assert err.may_have_been_applied is False


async def test_bulk_onto_a_key_that_is_not_a_stream_raises_the_caller_error_unchanged(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    async with make_redis() as r:
        await r.set("md:book", "not a stream")
        with pytest.raises(rex.ResponseError) as info:
            await r.xadd_bulk("md:book", [{"i": i} for i in range(250)], chunk_size=100)
        assert not isinstance(info.value, ConnectionError)
        assert error_code(info.value) == "WRONGTYPE"
        assert r.breaker.state.value == "closed"
    assert redis_server.cli("EXISTS", "dlq:md:book") == 0  # a caller error is not dead-lettered


async def test_bulk_chunk_that_fails_for_good_goes_to_the_dead_letter_stream(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str, otel: Otel
) -> None:
    wide = {f"f{i}": i for i in range(streams.MAX_FIELDS - 1)}  # with "i": the widest message allowed
    messages: list[dict[str, Any]] = [{"i": i, "payload": b"\xfe"} for i in range(250)]
    messages[200] = {"i": 200, **wide}
    async with make_proxied(retry={"max_attempts": 1}) as r:
        assert await r.xadd_bulk("warmup", [{"x": 1}]) == 1
        proxy.lose_next_reply()  # the first chunk lands, its reply is lost and it is not retried
        with pytest.raises(BulkWriteError) as info:
            await r.xadd_bulk("md:book", messages, chunk_size=100, maxlen=10_000)
    err = info.value
    assert err.outcome_unknown == tuple(range(100))
    assert err.not_written == tuple(range(100, 250))
    assert err.dead_lettered == tuple(range(250))
    dead = await _all_entries(redis_url, "dlq:md:book")
    assert [int(f[b"dlq.index"]) for _, f in dead] == list(range(250))
    assert [int(f[b"i"]) for _, f in dead] == list(range(250))
    assert dead[0][1][b"dlq.outcome"] == b"outcome_unknown"
    assert dead[100][1][b"dlq.outcome"] == b"not_written"
    assert dead[0][1][b"dlq.error"] == b"ConnectionError"
    assert dead[0][1][b"payload"] == b"\xfe"
    assert len(dead[200][1]) == streams.MAX_FIELDS + streams.DLQ_META_FIELDS
    assert sum(v for _, v in otel.points(names.DEAD_LETTERED)) == 250


async def test_bulk_message_over_the_field_limit_is_rejected_before_anything_is_sent(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer
) -> None:
    big = {f"f{i}": i for i in range(5000)}
    async with make_redis() as r:
        with pytest.raises(ValueError, match=r"message 2 has 5000 fields: at most 3900 \(MAX_FIELDS"):
            await r.xadd_bulk("md:wide", [{"n": 0}, {"n": 1}, big])
        with pytest.raises(ValueError, match="message 0 has 5000 fields"):
            await r.xadd("md:wide", big, id="1-1")
    assert redis_server.cli("EXISTS", "md:wide") == 0


async def test_bulk_script_error_in_the_middle_of_a_chunk_is_outcome_unknown(
    make_redis: Callable[..., RedisClient], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams, "check_field_count", lambda *_: None)  # let a message overflow Lua's unpack
    big = {f"f{i}": i for i in range(5000)}
    async with make_redis(stream_trace_context=False) as r:  # the raw entries compared below: no traceparent
        with pytest.raises(BulkWriteError) as info:
            await r.xadd_bulk("md:wide", [{"n": 0}, {"n": 1}, big, {"n": 3}], chunk_size=3)
    err = info.value
    assert err.outcome_unknown == (0, 1, 2)  # the script added two before it failed: not "not written"
    assert err.not_written == (3,)
    assert err.may_have_been_applied is True
    assert err.dead_lettered == ()  # the dead-letter chunk with the big message failed the same way, part-way
    assert "3 more of unknown dead-letter outcome" in str(err)
    assert [f for _, f in await _all_entries(redis_url, "md:wide")] == [{b"n": b"0"}, {b"n": b"1"}]


async def test_bulk_chunk_of_unknown_outcome_is_reported_as_such(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str
) -> None:
    slow_retry = {"max_attempts": 3, "initial_backoff": 0.2, "max_backoff": 0.2, "jitter": 0.0, "deadline": 2}
    messages = [{"i": i} for i in range(1000)]
    async with make_proxied(retry=slow_retry) as r:
        assert await r.xadd_bulk("warmup", [{"x": 1}]) == 1

        async def reply_lost() -> bool:
            return proxy.stats.replies_lost > 0

        async def cut_after_lost_reply() -> None:
            assert await eventually(reply_lost, timeout=5, interval=0.001)
            proxy.reset()  # the retries cannot even connect

        cutter = asyncio.create_task(cut_after_lost_reply())
        proxy.lose_next_reply()  # the first chunk is applied, its reply lost
        with pytest.raises(BulkWriteError) as info:
            await r.xadd_bulk("md:fills", messages, chunk_size=100)
        await cutter
        proxy.pass_through()
    err = info.value
    assert err.outcome_unknown == tuple(range(100))
    assert err.not_written == tuple(range(100, 1000))
    assert err.dead_lettered == ()
    assert err.may_have_been_applied is True
    entries = await _all_entries(redis_url, "md:fills")
    assert [int(f[b"i"]) for _, f in entries] == list(range(100))  # the unknown chunk did land, whole


async def test_bulk_validates_every_message_before_sending_anything(
    make_redis: Callable[..., RedisClient], redis_url: str
) -> None:
    async with make_redis() as r:
        bad: list[Any] = [{"i": 1}, {"i": None}]
        with pytest.raises(TypeError, match="message 1"):
            await r.xadd_bulk("s", bad)
        with pytest.raises(ValueError, match="message 0"):
            await r.xadd_bulk("s", [{}])
        with pytest.raises(ValueError, match="chunk_size"):
            await r.xadd_bulk("s", [{"i": 1}], chunk_size=0)
        assert await r.xadd_bulk("s", []) == 0
    assert await _all_entries(redis_url, "s") == []


async def test_bulk_maxlen_trims_and_concurrent_calls_each_keep_their_order(
    make_redis: Callable[..., RedisClient], redis_url: str
) -> None:
    async with make_redis(write_concurrency_limit=2) as r:
        results = await asyncio.gather(
            *(r.xadd_bulk(f"s{n}", [{"n": n, "i": i} for i in range(3000)], chunk_size=250) for n in range(4))
        )
        assert results == [3000] * 4
        stats = r._pool_stats()
        assert stats is not None and stats.idle + stats.used <= 2  # never more than 2 chunks in flight
        assert await r.xadd_bulk("capped", [{"i": i} for i in range(500)], 100, approximate=False) == 500
    for n in range(4):
        assert [int(f[b"i"]) for _, f in await _all_entries(redis_url, f"s{n}")] == list(range(3000))
    assert [int(f[b"i"]) for _, f in await _all_entries(redis_url, "capped")] == list(range(400, 500))


async def test_xadd_with_star_is_not_resent_but_an_explicit_id_is(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str
) -> None:
    async with make_proxied() as r:
        await r.xadd("s", {"warm": 1}, id="1-1")
        proxy.lose_next_reply()
        with pytest.raises(OutcomeUnknownError):
            await r.xadd("s", {"k": "auto"})
        proxy.lose_next_reply()
        assert await r.xadd("s", {"k": "explicit"}, id="99999999999999-7") == b"99999999999999-7"  # re-sent once
    entries = await _all_entries(redis_url, "s")
    assert entries[0][0] == b"1-1"
    assert [f.get(b"k") for _, f in entries[1:]] == [b"auto", b"explicit"]


async def test_consumer_group_flow_read_ack_and_autoclaim(make_redis: Callable[..., RedisClient]) -> None:
    async with make_redis() as r:
        assert await r.ensure_consumer_group("orders", "exec") is True
        assert await r.ensure_consumer_group("orders", "exec") is False  # BUSYGROUP is success
        await r.xadd_bulk("orders", [{"n": i} for i in range(10)])

        first = await r.read_stream_messages("orders", "exec", "c1", count=5)
        assert [int(m.fields[b"n"]) for m in first] == [0, 1, 2, 3, 4]
        assert await r.acknowledge_message("orders", "exec", *(m.id for m in first[:3])) == 3
        rest = await r.read_stream_messages("orders", "exec", "c2", count=100)
        assert [int(m.fields[b"n"]) for m in rest] == [5, 6, 7, 8, 9]
        assert await r.acknowledge_message("orders", "exec", *(m.id for m in rest)) == 5

        await asyncio.sleep(0.05)  # c1 crashed with two messages pending
        claim = await r.xautoclaim_stale_messages("orders", "exec", "c2", min_idle_ms=20)
        assert [int(m.fields[b"n"]) for m in claim.messages] == [3, 4]
        assert claim.next_id == b"0-0"
        assert claim.deleted_ids == []
        assert await r.acknowledge_message("orders", "exec", *(m.id for m in claim.messages)) == 2
        again = await r.xautoclaim_stale_messages("orders", "exec", "c2", min_idle_ms=0)
        assert again.messages == []
        pending = await r.run("XPENDING", lambda c: c.execute_command("XPENDING", "orders", "exec"), idempotent=True)
        assert pending["pending"] == 0


async def test_missing_group_is_recreated_and_nothing_written_since_is_missed(
    make_redis: Callable[..., RedisClient],
) -> None:
    async with make_redis() as r:
        await r.ensure_consumer_group("fills", "risk")
        await r.delete("fills")  # e.g. Redis restarted without persistence: stream and group are gone
        await r.xadd("fills", {"n": 1})
        got = await r.read_stream_messages("fills", "risk", "c1")
        assert [m.fields for m in got] == [{b"n": b"1"}]


async def test_blocking_reads_outlast_the_socket_timeout_without_counting_as_failures(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    async with make_redis(socket_timeout=0.2, breaker={"fail_max": 1, "reset_timeout": 5}) as r:
        await r.ensure_consumer_group("idle", "g")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await r.read_stream_messages("idle", "g", "c", block_ms=600) == []
        assert await r.brpop("empty", 0.6) is None
        assert loop.time() - t0 >= 1.1
        assert r.breaker.failure_count == 0

        async def push_later() -> None:
            await asyncio.sleep(0.4)
            await r.lpush("jobs", b"job-1")

        pusher = asyncio.create_task(push_later())
        assert await r.brpop(["other", "jobs"], 2.0) == (b"jobs", b"job-1")
        await pusher
    assert otel.points(names.RETRIES) == []
    assert not [a for a, _ in otel.points(names.OPERATION_DURATION) if names.ERROR_TYPE in a]


async def test_bulk_after_the_script_cache_was_flushed(
    make_redis: Callable[..., RedisClient], redis_server: RedisServer, redis_url: str
) -> None:
    async with make_redis() as r:
        assert await r.xadd_bulk("s", [{"i": 0}]) == 1
        redis_server.cli("SCRIPT", "FLUSH")  # as after a restart: EVALSHA answers NOSCRIPT, nothing ran
        assert await r.xadd_bulk("s", [{"i": 1}, {"i": 2}]) == 2
        assert await r.xadd_bulk("s", [{"i": 3}]) == 1
    assert [int(f[b"i"]) for _, f in await _all_entries(redis_url, "s")] == [0, 1, 2, 3]


async def test_dead_letter_message_copies_acknowledges_and_never_duplicates(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str, otel: Otel
) -> None:
    async with make_proxied(stream_trace_context=False) as r:  # the raw copy compared below: no traceparent
        await r.ensure_consumer_group("md:ticks", "g")
        await r.xadd("md:ticks", {"px": "bad", "raw": b"\xff"})
        await r.xadd("md:ticks", {"px": "1"})
        poison, _good = await r.read_stream_messages("md:ticks", "g", "c1")
        proxy.lose_next_reply()  # the copy is made, its reply lost: the retry must not copy it again
        copy_id = await r.dead_letter_message("md:ticks", "g", poison, reason="px is not a number")
        assert await r.dead_letter_message("md:ticks", "g", poison, reason="again") == copy_id  # redelivered
        assert proxy.stats.replies_lost == 1
        pending = await r.run("XPENDING", lambda c: c.execute_command("XPENDING", "md:ticks", "g"), idempotent=True)
        assert pending["pending"] == 1  # only the good entry is still pending
    dead = await _all_entries(redis_url, "dlq:md:ticks")
    assert [entry_id for entry_id, _ in dead] == [copy_id]
    assert dead[0][1] == {
        b"dlq.stream": b"md:ticks",
        b"dlq.group": b"g",
        b"dlq.id": poison.id,
        b"dlq.error": b"px is not a number",
        b"px": b"bad",
        b"raw": b"\xff",
    }
    assert sum(v for _, v in otel.points(names.DEAD_LETTERED)) == 1

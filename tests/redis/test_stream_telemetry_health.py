"""Consumer-group health gauges and the message-age histogram, against a real stalled consumer and a dead server."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from support.otel import Otel
from support.proxy import FaultProxy
from trading_shared import RedisClient
from trading_shared.telemetry import names

STREAM = "md:ticks"
GROUP = "candles"


def _gauges(otel: Otel) -> dict[str, Any]:
    """The three health gauges of (STREAM, GROUP) from one collection (absent ones left out)."""
    data = otel.reader.get_metrics_data()
    out: dict[str, Any] = {}
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name.startswith("trading_shared.stream.group."):
                    for p in m.data.data_points:
                        attrs = dict(p.attributes)
                        assert attrs.keys() == {
                            names.MESSAGING_SYSTEM,
                            names.MESSAGING_DESTINATION_NAME,
                            names.MESSAGING_CONSUMER_GROUP_NAME,
                        }
                        assert attrs[names.MESSAGING_DESTINATION_NAME] == STREAM
                        if attrs[names.MESSAGING_CONSUMER_GROUP_NAME] == GROUP:
                            out[m.name] = p.value
    return out


def _age_histogram(otel: Otel) -> tuple[int, float]:
    """``(count, sum)`` of the message-age histogram."""
    data = otel.reader.get_metrics_data()
    for rm in data.resource_metrics if data else []:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                if m.name == names.STREAM_MESSAGE_AGE:
                    [p] = m.data.data_points
                    return p.count, p.sum
    return 0, 0.0


async def test_gauges_follow_a_stalled_consumer(make_redis: Callable[..., RedisClient], otel: Otel) -> None:
    async with make_redis() as r:
        r.observe_stream(STREAM, GROUP)
        await r.ensure_consumer_group(STREAM, GROUP)
        await r.refresh_stream_health()
        assert _gauges(otel) == {
            names.STREAM_GROUP_LAG: 0,
            names.STREAM_GROUP_PENDING: 0,
            names.STREAM_GROUP_OLDEST_PENDING_AGE: 0.0,
        }
        for i in range(5):
            await r.xadd(STREAM, {"i": i})
        stuck = await r.read_stream_messages(STREAM, GROUP, "w1", count=3)  # read, never acknowledged
        await asyncio.sleep(0.3)
        await r.refresh_stream_health()
        first = _gauges(otel)
        assert first[names.STREAM_GROUP_LAG] == 2
        assert first[names.STREAM_GROUP_PENDING] == 3
        assert 0.3 <= first[names.STREAM_GROUP_OLDEST_PENDING_AGE] < 5
        for i in range(4):
            await r.xadd(STREAM, {"i": 5 + i})
        await asyncio.sleep(0.2)
        await r.refresh_stream_health()
        later = _gauges(otel)
        assert later[names.STREAM_GROUP_LAG] == 6  # grows while nothing reads
        assert later[names.STREAM_GROUP_PENDING] == 3
        assert later[names.STREAM_GROUP_OLDEST_PENDING_AGE] >= first[names.STREAM_GROUP_OLDEST_PENDING_AGE] + 0.2
        assert await r.acknowledge_message(STREAM, GROUP, *(e.id for e in stuck)) == 3
        await r.refresh_stream_health()
        done = _gauges(otel)
        assert done[names.STREAM_GROUP_PENDING] == 0 and done[names.STREAM_GROUP_OLDEST_PENDING_AGE] == 0.0
    count, total = _age_histogram(otel)
    assert count == 3
    assert 3 * 0.5 <= total < 3 * 10  # each was appended at least 0.5 s before its XACK
    assert otel.spans("XINFO") == []  # the refreshes leave no spans


async def test_the_age_histogram_reads_the_append_time_from_the_id(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    appended = int(time.time() * 1000) - 60_000  # an entry appended a minute ago
    async with make_redis() as r:
        await r.ensure_consumer_group(STREAM, GROUP)
        await r.xadd(STREAM, {"i": 0}, id=f"{appended}-0")
        [entry] = await r.read_stream_messages(STREAM, GROUP, "w1")
        await r.acknowledge_message(STREAM, GROUP, entry.id)
    count, total = _age_histogram(otel)
    assert count == 1
    assert 60 <= total < 70


async def test_collection_refreshes_in_the_background_one_round_trip_per_stream(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    async with make_redis(telemetry_streams=[f"{STREAM}={GROUP}", f"{STREAM}=other"]) as r:
        await r.ensure_consumer_group(STREAM, GROUP)
        await r.ensure_consumer_group(STREAM, "other")
        await r.xadd(STREAM, {"i": 0})
        assert _gauges(otel) == {}  # the first collection has nothing cached yet: it asks for a refresh
        for _ in range(100):
            await asyncio.sleep(0.01)
            if _gauges(otel):
                break
        assert _gauges(otel)[names.STREAM_GROUP_LAG] == 1
        calls = [a for a, _ in otel.points(names.OPERATION_DURATION) if a[names.DB_OPERATION_NAME] == "XINFO GROUPS"]
        assert len(calls) == 1  # one stream, two groups: one pipelined round trip per refresh


async def test_a_dead_server_never_stalls_metric_collection(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, otel: Otel
) -> None:
    async with make_proxied(stream_health_timeout=0.3, stream_health_max_age=0.6) as r:
        r.observe_stream(STREAM, GROUP)
        await r.ensure_consumer_group(STREAM, GROUP)
        await r.refresh_stream_health()
        assert _gauges(otel)[names.STREAM_GROUP_PENDING] == 0
        proxy.blackhole()  # the server stops answering: every refresh hangs until its timeout
        slowest = 0.0
        seen_absent = False
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            started = time.perf_counter()
            gauges = _gauges(otel)
            slowest = max(slowest, time.perf_counter() - started)
            if not gauges:
                seen_absent = True
                break
            await asyncio.sleep(0.05)
        assert slowest < 0.05  # collection reads cached figures; it never waits on the server
        assert seen_absent  # figures older than stream_health_max_age are dropped, not exported as current
        started = time.perf_counter()
        await r.refresh_stream_health()  # an explicit refresh is bounded by stream_health_timeout
        assert time.perf_counter() - started < 1.0
        proxy.pass_through()

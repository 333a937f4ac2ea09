"""Spans and metrics of RedisClient, asserted with in-memory OpenTelemetry providers passed explicitly."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis.exceptions as rex
from redis_testing import SECRET

from support.otel import Otel
from support.servers import RedisServer
from trading_shared import RedisClient, RedisSettings
from trading_shared.telemetry import names

KEY = "acct:SECRET-KEY-7f3a"
VALUE = "SECRET-VALUE-91c2"


async def test_spans_and_metrics_follow_the_conventions_and_carry_no_data(
    secured_redis: RedisServer, otel: Otel
) -> None:
    settings = RedisSettings(url=secured_redis.url(db=3), name="quotes")
    async with RedisClient(settings, **otel.providers()) as r:
        await r.set(KEY, VALUE)
        assert await r.get(KEY) == VALUE.encode()
        with pytest.raises(rex.ResponseError):
            await r.hget(KEY, "field")  # WRONGTYPE
        with pytest.raises(rex.ResponseError, match="NOGROUP"):  # its message names the key
            await r.xautoclaim_stale_messages(KEY + ":stream", "grp-SECRET", "c", min_idle_ms=0)
        await r.xadd_bulk(KEY + ":s", [{"f": VALUE}] * 3)
        await r.run_pipeline(lambda p: p.set(KEY, VALUE).get(KEY))

    [get_span] = otel.spans("GET")
    assert get_span.name == "GET 3"
    assert get_span.kind.name == "CLIENT"
    attrs = dict(get_span.attributes or {})
    assert attrs == {
        names.DB_SYSTEM_NAME: "redis",
        names.DB_NAMESPACE: "3",
        names.DB_OPERATION_NAME: "GET",
        names.SERVER_ADDRESS: "127.0.0.1",
        names.SERVER_PORT: secured_redis.port,
        names.POOL_NAME: "quotes",
    }
    [failed] = otel.spans("HGET")
    assert failed.attributes is not None
    assert failed.attributes[names.ERROR_TYPE] == "ResponseError"
    assert failed.attributes[names.DB_RESPONSE_STATUS_CODE] == "WRONGTYPE"
    assert failed.status.status_code.name == "ERROR"
    [nogroup] = otel.spans("XAUTOCLAIM")
    assert nogroup.attributes is not None and nogroup.attributes[names.DB_RESPONSE_STATUS_CODE] == "NOGROUP"
    assert {s.name for s in otel.spans()} >= {"connect 3", "SET 3", "PIPELINE XADD 3", "PIPELINE 3"}

    durations = otel.points(names.OPERATION_DURATION)
    ops = {a[names.DB_OPERATION_NAME] for a, _ in durations}
    assert {"connect", "SET", "GET", "HGET", "XAUTOCLAIM", "PIPELINE XADD", "PIPELINE"} <= ops
    for point_attrs, _ in durations:
        assert point_attrs[names.DB_SYSTEM_NAME] == "redis"
        assert point_attrs[names.DB_NAMESPACE] == "3"

    text = otel.everything_as_text()
    for secret in (KEY, VALUE, SECRET, "SECRET", "grp-"):
        assert secret not in text


async def test_retries_are_attempt_events_on_one_span(make_redis: Callable[..., RedisClient], otel: Otel) -> None:
    async with make_redis() as r:
        with pytest.raises(ConnectionError):
            await r.run("DEBUG", lambda c: c.execute_command("DEBUG", "ERROR", "LOADING again"), idempotent=True)
    [span] = otel.spans("DEBUG")
    events = [e for e in span.events if e.name == names.EVENT_ATTEMPT_FAILED]
    assert len(events) == 4
    assert all(e.attributes and e.attributes[names.FAULT] == "unavailable" for e in events)
    assert span.attributes is not None and span.attributes[names.ATTEMPTS] == 4
    retries = otel.points(names.RETRIES)
    assert sum(v for _, v in retries) == 3
    assert {a[names.ERROR_TYPE] for a, _ in retries} == {"BusyLoadingError"}


async def test_pool_wait_and_use_are_timed_for_bulk_writes_only(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    async with make_redis() as r:
        await r.set("k", b"v")
        await r.get("k")
        assert otel.points(names.CONNECTION_WAIT_TIME) == []  # single commands stay lean
        await r.xadd_bulk("md:timed", [{"i": i} for i in range(10)])
    waits = otel.points(names.CONNECTION_WAIT_TIME)
    uses = otel.points(names.CONNECTION_USE_TIME)
    assert waits
    assert uses
    assert waits[0][0][names.DB_SYSTEM_NAME] == "redis"

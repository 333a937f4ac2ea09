"""Streams as messaging telemetry, against the real Redis: spans, links and the trace context carried in entries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from support.otel import Otel
from support.proxy import FaultProxy
from trading_shared import RedisClient
from trading_shared.redis.stream_tracing import format_traceparent, parse_traceparent
from trading_shared.telemetry import names

STREAM = "md:ticks"
GROUP = "candles"


async def _raw_entries(url: str, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    raw = aioredis.from_url(url)
    try:
        return list(await raw.xrange(stream))
    finally:
        await raw.aclose()


def _attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def _one(otel: Otel, name: str) -> ReadableSpan:
    found = [s for s in otel.spans() if s.name == name]
    assert len(found) == 1, [s.name for s in otel.spans()]
    return found[0]


async def test_one_trace_leads_from_xadd_to_the_process_span(
    make_redis: Callable[..., RedisClient], redis_url: str, otel: Otel
) -> None:
    async with make_redis() as producer, make_redis() as consumer:
        producer.declare_stream(STREAM)
        consumer.declare_stream(STREAM, GROUP)
        await consumer.ensure_consumer_group(STREAM, GROUP)
        entry_id = await producer.xadd(STREAM, {"px": "101.5", "sym": "BTC"})
        [entry] = await consumer.read_stream_messages(STREAM, GROUP, "w1")
        with consumer.process_span(STREAM, GROUP, entry) as span:
            assert span is not None and span.is_recording()
        assert await consumer.acknowledge_message(STREAM, GROUP, entry.id) == 1

    assert entry.fields == {b"px": b"101.5", b"sym": b"BTC"}  # the context field never reaches the caller
    entry_id_, fields = entry  # still a 2-tuple
    assert (entry_id_, fields) == (entry_id, entry.fields)
    send = _one(otel, f"XADD {STREAM}")
    assert send.kind is SpanKind.PRODUCER
    assert _attrs(send).items() >= {
        names.MESSAGING_SYSTEM: "redis",
        names.MESSAGING_OPERATION_NAME: "send",
        names.MESSAGING_OPERATION_TYPE: "send",
        names.MESSAGING_DESTINATION_NAME: STREAM,
        names.MESSAGING_MESSAGE_ID: entry_id.decode(),
        names.DB_OPERATION_NAME: "XADD",  # still the database span of the call, not a second span
    }.items()
    [(_, raw_fields)] = await _raw_entries(redis_url, STREAM)
    assert raw_fields[b"traceparent"] == format_traceparent(send.context)
    assert entry.traceparent == raw_fields[b"traceparent"]

    receive = _one(otel, f"XREADGROUP {STREAM}")
    assert receive.kind is SpanKind.CLIENT
    assert _attrs(receive)[names.MESSAGING_OPERATION_TYPE] == "receive"
    assert _attrs(receive)[names.MESSAGING_CONSUMER_GROUP_NAME] == GROUP
    assert _attrs(receive)[names.MESSAGING_BATCH_MESSAGE_COUNT] == 1
    assert [link.context.span_id for link in receive.links] == [send.context.span_id]

    process = _one(otel, f"process {STREAM}")
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id  # the tick's trace shows what processed it
    assert process.parent is not None and process.parent.span_id == send.context.span_id
    assert [link.context.span_id for link in process.links] == [send.context.span_id]
    assert _attrs(process)[names.MESSAGING_MESSAGE_ID] == entry_id.decode()
    ack = _one(otel, f"XACK {STREAM}")
    assert _attrs(ack)[names.MESSAGING_OPERATION_TYPE] == "settle"
    assert _attrs(ack)[names.MESSAGING_MESSAGE_ID] == entry_id.decode()
    [(sent_attrs, sent)] = otel.points(names.MESSAGING_SENT_MESSAGES)
    assert sent == 1 and sent_attrs[names.MESSAGING_DESTINATION_NAME] == STREAM
    consumed = {a[names.MESSAGING_OPERATION_NAME]: v for a, v in otel.points(names.MESSAGING_CONSUMED_MESSAGES)}
    assert consumed == {"receive": 1, "claim": 0}


async def test_a_batch_links_to_every_producer_and_stays_in_the_consumers_trace(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    async with make_redis() as r:
        await r.ensure_consumer_group(STREAM, GROUP)
        for i in range(3):
            await r.xadd(STREAM, {"i": i})  # three calls, three traces
        await r.xadd_bulk(STREAM, [{"i": i} for i in range(3, 8)], chunk_size=2)
        tracer = otel.tracer_provider.get_tracer("test")
        with tracer.start_as_current_span("consumer loop") as loop_span:
            entries = await r.read_stream_messages(STREAM, GROUP, "w1", count=100)
            with r.process_span(STREAM, GROUP, entries):
                pass
            claimed = await r.xautoclaim_stale_messages(STREAM, GROUP, "w2", min_idle_ms=0)

    assert [int(e.fields[b"i"]) for e in entries] == list(range(8))
    sends = [s for s in otel.spans("XADD ")]
    [bulk] = otel.spans("send")
    assert len(sends) == 3 and len({s.context.trace_id for s in sends}) == 3
    producers = {s.context.span_id for s in sends} | {bulk.context.span_id}
    chunks = otel.spans("PIPELINE XADD")
    assert len(chunks) == 3 and all(c.parent is not None and c.parent.span_id == bulk.context.span_id for c in chunks)
    assert bulk.kind is SpanKind.PRODUCER and _attrs(bulk)[names.MESSAGING_BATCH_MESSAGE_COUNT] == 5
    assert {e.traceparent for e in entries[3:]} == {format_traceparent(bulk.context)}  # the bulk's send span

    [process] = otel.spans("process")
    assert process.name == "process"  # an undeclared stream is not named
    assert _attrs(process)[names.MESSAGING_DESTINATION_NAME] == names.UNDECLARED_STREAM
    assert _attrs(process)[names.MESSAGING_BATCH_MESSAGE_COUNT] == 8
    assert {link.context.span_id for link in process.links} == producers  # distinct producers, one link each
    assert process.parent is not None and process.parent.span_id == loop_span.get_span_context().span_id
    [receive] = otel.spans("XREADGROUP")
    assert {link.context.span_id for link in receive.links} == producers
    assert [int(e.fields[b"i"]) for e in claimed.messages] == list(range(8))
    [claim] = otel.spans("XAUTOCLAIM")
    assert _attrs(claim)[names.MESSAGING_OPERATION_NAME] == "claim"
    assert len(claim.links) == 4
    sent = sum(v for _, v in otel.points(names.MESSAGING_SENT_MESSAGES))
    assert sent == 8


async def test_the_setting_off_writes_no_field_and_entries_without_one_work_as_before(
    make_redis: Callable[..., RedisClient], redis_url: str, otel: Otel
) -> None:
    raw = aioredis.from_url(redis_url)
    try:
        await raw.xadd(STREAM, {"old": "entry"})  # written before this version, or by a foreign producer
    finally:
        await raw.aclose()
    async with make_redis(stream_trace_context=False) as quiet, make_redis() as r:
        await quiet.xadd(STREAM, {"n": 1})
        await quiet.xadd_bulk(STREAM, [{"n": 2}, {"n": 3}])
        await r.xadd(STREAM, {"n": 4}, trace_context=False)  # per call
        await r.xadd(STREAM, {"n": 5, "traceparent": "mine"})  # the caller's own field is kept, not doubled
        entries = await r.read_stream_messages(STREAM, GROUP, "w1")
        with r.process_span(STREAM, GROUP, entries[0]):
            pass
        assert await r.acknowledge_message(STREAM, GROUP, *(e.id for e in entries)) == 6
    raw_fields = [f for _, f in await _raw_entries(redis_url, STREAM)]
    assert all(b"traceparent" not in f for f in raw_fields[:5])
    assert raw_fields[5] == {b"n": b"5", b"traceparent": b"mine"}
    assert [e.fields for e in entries[:5]] == [{b"old": b"entry"}, *({b"n": b"%d" % n} for n in range(1, 5))]
    assert all(e.traceparent is None for e in entries[:5])
    assert entries[5].traceparent == b"mine" and parse_traceparent(b"mine") is None
    [process] = otel.spans("process")
    assert process.links == () and process.parent is None  # nothing to link to: a root span as before
    [receive] = otel.spans("XREADGROUP")
    assert receive.links == ()


async def test_bulk_with_trace_context_has_no_duplicates_after_a_lost_reply(
    make_proxied: Callable[..., RedisClient], proxy: FaultProxy, redis_url: str, otel: Otel
) -> None:
    async with make_proxied() as r:
        assert await r.xadd("warm", {"x": 1}) is not None
        proxy.lose_next_reply()  # the first chunk lands, its reply is lost: the pipeline re-sends the same bytes
        assert await r.xadd_bulk(STREAM, [{"seq": i} for i in range(300)], chunk_size=100) == 300
        proxy.lose_next_reply()
        assert await r.xadd(STREAM, {"seq": 300}, id="99999999999999-1") == b"99999999999999-1"
    assert proxy.stats.replies_lost == 2
    assert sum(v for _, v in otel.points(names.RETRIES)) == 2
    entries = await _raw_entries(redis_url, STREAM)
    assert [int(f[b"seq"]) for _, f in entries] == list(range(301))  # lost = 0, duplicated = 0, in order
    [bulk] = otel.spans("send")
    assert {f[b"traceparent"] for _, f in entries[:300]} == {format_traceparent(bulk.context)}
    explicit = otel.spans("XADD")[-1]
    assert entries[300][1][b"traceparent"] == format_traceparent(explicit.context)


async def test_declared_streams_are_named_and_nothing_else_is(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    secret_stream, secret_group, secret_value = "acct:SECRET-KEY-7f3a", "grp-SECRET-1", "SECRET-VALUE-91c2"
    async with make_redis(telemetry_streams=[f"{STREAM}={GROUP}", "md:book"]) as r:
        r.declare_stream("md:trades")  # named, its groups not
        for stream in (STREAM, "md:trades", secret_stream):
            await r.xadd(stream, {"payload": secret_value})
            await r.ensure_consumer_group(stream, GROUP)
            await r.ensure_consumer_group(stream, secret_group)
            [entry] = await r.read_stream_messages(stream, GROUP, "w1")
            [other] = await r.read_stream_messages(stream, secret_group, "w1")
            with r.process_span(stream, secret_group, other):
                pass
            await r.dead_letter_message(stream, secret_group, other, reason="bad")
            await r.acknowledge_message(stream, GROUP, entry.id)
        await r.set(secret_stream + ":str", secret_value)
        with pytest.raises(Exception, match="WRONGTYPE"):
            await r.xadd(secret_stream + ":str", {"f": secret_value})  # the error message is not recorded
    stream_names = {_attrs(s).get(names.MESSAGING_DESTINATION_NAME) for s in otel.spans()} - {None}
    assert stream_names == {STREAM, "md:trades", names.UNDECLARED_STREAM}
    groups = {_attrs(s).get(names.MESSAGING_CONSUMER_GROUP_NAME) for s in otel.spans()} - {None}
    assert groups == {GROUP, names.UNDECLARED_STREAM}
    assert {s.name for s in otel.spans("XADD")} == {f"XADD {STREAM}", "XADD md:trades", "XADD 0"}
    for metric in (names.MESSAGING_SENT_MESSAGES, names.MESSAGING_CONSUMED_MESSAGES, names.STREAM_MESSAGE_AGE):
        labels = {a[names.MESSAGING_DESTINATION_NAME] for a, _ in otel.points(metric)}
        assert labels <= {STREAM, "md:trades", "md:book", names.UNDECLARED_STREAM}, metric
        assert names.UNDECLARED_STREAM in labels, metric
    text = otel.everything_as_text()
    for secret in ("SECRET", "acct:", "grp-", "payload", "7f3a", "91c2", "dlq:"):
        assert secret not in text, secret


async def test_the_old_multi_stream_read_strips_the_field_too(
    make_redis: Callable[..., RedisClient], redis_url: str
) -> None:
    async with make_redis() as r:
        assert await r.read_grouped_streams(GROUP, "c", {STREAM: ">"}, block=50) == []  # creates the group
        await r.xadd(STREAM, {"px": "1"})
        reply = await r.read_grouped_streams(GROUP, "c", {STREAM: ">"}, block=50)
    [(_, [(_, fields)])] = reply
    assert fields == {b"px": b"1"}  # old callers iterate the fields: they see what they wrote
    [(_, raw_fields)] = await _raw_entries(redis_url, STREAM)
    assert b"traceparent" in raw_fields


async def test_a_failure_inside_the_process_span_marks_it_without_its_message(
    make_redis: Callable[..., RedisClient], otel: Otel
) -> None:
    async with make_redis() as r:
        await r.xadd(STREAM, {"px": "bad"})
        [entry] = await r.read_stream_messages(STREAM, GROUP, "w1")
        with pytest.raises(ValueError, match="SECRET-PRICE"), r.process_span(STREAM, GROUP, entry):
            raise ValueError("unparsable SECRET-PRICE")
    [process] = otel.spans("process")
    assert process.status.status_code.name == "ERROR"
    assert _attrs(process)[names.ERROR_TYPE] == "ValueError"
    assert process.events == ()  # no exception event: its message could quote the payload
    assert "SECRET-PRICE" not in otel.everything_as_text()

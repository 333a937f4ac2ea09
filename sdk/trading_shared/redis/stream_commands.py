"""The stream commands of RedisClient: XADD, bulk appends, consumer groups, reads, acknowledgements, dead letters.

Stream semantics (dedupe keys, scripts, entry parsing) live in :mod:`.streams`; bulk appends in :mod:`.bulk`; their
messaging spans, trace context and metrics in :mod:`.stream_tracing` (docs/stream-telemetry.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.exceptions as rex

from ..telemetry import names
from ..telemetry.client import SPAN_SHAPE, SpanShape
from . import stream_tracing as st
from . import streams
from .bulk import BulkAppender
from .classify import error_code
from .endpoints import Key
from .pool import Commands
from .stream_observe import StreamTelemetry
from .streams import ClaimResult, Fields, StreamEntry

T = TypeVar("T")


class StreamCommands(StreamTelemetry):
    """Stream commands (mixed into :class:`~trading_shared.RedisClient`)."""

    async def _shaped(self, shape: SpanShape, call: Callable[[], Awaitable[T]]) -> T:
        """Run one call with its span shaped as ``shape`` (see :mod:`.stream_tracing`)."""
        token = SPAN_SHAPE.set(shape)
        try:
            return await call()
        finally:
            SPAN_SHAPE.reset(token)

    async def xadd(
        self,
        stream: Key,
        fields: Fields,
        *,
        id: str | bytes = "*",
        maxlen: int | None = None,
        approximate: bool = True,
        trace_context: bool | None = None,
    ) -> bytes:
        """XADD one entry; returns its ID.

        With ``id="*"`` the server assigns the ID and a failure after sending raises OutcomeUnknownError. With an
        explicit ``<ms>-<seq>`` ID the call is safe to re-send: a retry adds the entry only if it is not there yet.
        The entry carries the call's trace context in a ``traceparent`` field (``trace_context``, default the
        ``stream_trace_context`` setting), unless ``fields`` has one already.
        """
        streams.check_maxlen(maxlen)
        args = streams.xadd_args(fields, id, maxlen, approximate)
        shape = self._streams.shape("XADD", stream, None, st.SEND)
        context = self.settings.stream_trace_context if trace_context is None else trace_context
        if context and st.has_traceparent(fields):
            context = False
        explicit = streams.is_explicit_id(id)
        if explicit:
            streams.check_field_count(fields, 0)  # a re-send goes through a script (Lua unpack limit)
        tries = 0

        async def add(r: Commands) -> Any:
            nonlocal tries
            tries += 1
            sent = args
            if context:
                value = st.current_traceparent(shape)
                sent = args if value is None else [*args, streams.TRACEPARENT, value]
            if tries == 1 or not explicit:
                result = await r.execute_command("XADD", stream, *sent)
            else:
                result = await streams.XADD_IF_ABSENT.run(r, [streams.as_key(stream)], [id, *sent])
            if shape.span is not None:
                shape.span.set_attribute(names.MESSAGING_MESSAGE_ID, bytes(result).decode(errors="replace"))
            return result

        try:
            result = await self._shaped(
                shape, lambda: self._call("XADD", add, idempotent=explicit, key=stream, write=True)
            )
        except Exception as exc:
            self._streams.sent(stream, 1, exc)
            raise
        self._streams.sent(stream, 1)
        return bytes(result)

    async def xadd_bulk(
        self,
        stream: Key,
        messages: Sequence[Fields],
        maxlen: int | None = None,
        *,
        approximate: bool = True,
        chunk_size: int = 500,
        dead_letter: bool = True,
        dedupe_ttl: int = streams.DEFAULT_DEDUPE_TTL,
        trace_context: bool | None = None,
    ) -> int:
        """Append ``messages`` to ``stream`` in order, in chunks, without duplicates; returns how many were added.

        Each chunk is one atomic script call, safe to re-send (see :mod:`trading_shared.redis.streams`); chunks of
        one call are written in order and at most ``write_concurrency_limit`` chunks of the client are in flight.
        If a chunk still fails after retries, writing stops, the unwritten messages are copied to ``dlq:<stream>``
        (when ``dead_letter`` and the server takes them) and :class:`~trading_shared.errors.BulkWriteError` names
        the input indexes not written, of unknown outcome, and dead-lettered. Messages are validated first: a bad
        one raises ValueError/TypeError before anything is sent.

        The call has one ``send`` span (kind PRODUCER) over its chunk spans; each message carries that span's
        context in a ``traceparent`` field (``trace_context``, default the ``stream_trace_context`` setting),
        packed once with the message, so a re-sent chunk is the same bytes under the same dedupe token.
        """
        shape = self._streams.shape("send", stream, None, st.SEND)
        span = shape.span = st.start_span(self._telemetry, shape, {names.MESSAGING_BATCH_MESSAGE_COUNT: len(messages)})
        context = self.settings.stream_trace_context if trace_context is None else trace_context
        value = st.current_traceparent(shape) if context else None
        if value is not None:
            messages = [st.with_traceparent(m, value) for m in messages]
        try:
            with st.active(span):
                appender = BulkAppender(
                    lambda op, key, fn: self._call(op, fn, idempotent=True, key=key, write=True),
                    self._write_slots,
                    self._telemetry,
                    stream=stream,
                    messages=messages,
                    maxlen=maxlen,
                    approximate=approximate,
                    chunk_size=chunk_size,
                    dead_letter=dead_letter,
                    dedupe_ttl=dedupe_ttl,
                )
                added = await appender.run()
        except Exception as exc:
            if not isinstance(exc, ValueError | TypeError):
                self._streams.sent(stream, len(messages), exc)
            raise
        self._streams.sent(stream, len(messages))
        return added

    async def ensure_consumer_group(
        self, stream: Key, group: Key, *, start_id: str | bytes = "0", mkstream: bool = True
    ) -> bool:
        """Create consumer ``group`` on ``stream`` (and the stream, with ``mkstream``); False if it already existed.

        ``start_id="0"`` (default) delivers the entries already in the stream too, so none written before the group
        existed is skipped; pass ``"$"`` for new entries only.
        """
        return bool(
            await self._call(
                "XGROUP CREATE",
                lambda r: create_group(r, stream, group, start_id, mkstream),
                idempotent=True,
                key=stream,
                write=True,
            )
        )

    async def read_stream_messages(
        self,
        stream: Key,
        group: Key,
        consumer: Key,
        *,
        count: int = 100,
        block_ms: int | None = None,
        start_id: str | bytes = ">",
        recreate_from: str | bytes = "0",
    ) -> list[StreamEntry]:
        """XREADGROUP: up to ``count`` entries for ``consumer`` (``start_id=">"``: never delivered before).

        ``block_ms`` > 0 waits that long for entries (neither cut by the socket timeout nor counted as a failure).
        A missing group (NOGROUP, e.g. after a restart without persistence) is recreated from ``recreate_from``
        and the read repeated. Safe to re-send: entries delivered by a lost reply stay pending for this consumer
        (read them with ``start_id="0"`` or claim them with :meth:`xautoclaim_stale_messages`).
        """
        if block_ms is not None and (isinstance(block_ms, bool) or block_ms <= 0):
            raise ValueError("block_ms must be > 0 or None")
        args: list[Any] = ["XREADGROUP", "GROUP", group, consumer, "COUNT", count]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        args += ["STREAMS", stream, start_id]

        shape = self._streams.shape("XREADGROUP", stream, group, st.RECEIVE)

        async def read(r: Commands) -> list[StreamEntry]:
            try:
                raw = await r.execute_command(*args)
            except rex.ResponseError as exc:
                if error_code(exc) != "NOGROUP":
                    raise
                await create_group(r, stream, group, recreate_from, True)
                raw = await r.execute_command(*args)
            found = streams.entries(raw[0][1]) if raw else []
            st.on_received(shape.span, found)
            return found

        blocking = block_ms / 1000 if block_ms is not None else None
        found = await self._shaped(
            shape, lambda: self._call("XREADGROUP", read, idempotent=True, blocking=blocking, key=stream)
        )
        self._streams.consumed(stream, group, st.RECEIVE, len(found))
        return found

    async def acknowledge_message(self, stream: Key, group: Key, *ids: str | bytes) -> int:
        """XACK: how many of ``ids`` were pending and are now acknowledged.

        Records each entry's age (now minus the append time in its ID) in ``trading_shared.stream.message.age``.
        """
        if not ids:
            return 0
        shape = self._streams.shape("XACK", stream, group, st.ACK)

        async def ack(r: Commands) -> Any:
            st.describe_ids(shape.span, ids)
            return await r.execute_command("XACK", stream, group, *ids)

        done = int(
            await self._shaped(shape, lambda: self._call("XACK", ack, idempotent=True, key=stream, write=True))
        )
        self._streams.acknowledged(stream, group, ids)
        return done

    async def dead_letter_message(self, stream: Key, group: Key, entry: StreamEntry, *, reason: str) -> bytes:
        """Copy a consumed ``entry`` to ``dlq:<stream>`` (its fields plus ``dlq.stream``, ``dlq.group``, ``dlq.id``,
        ``dlq.error`` = ``reason``), then acknowledge it in ``group``; returns the ID of the dead-letter copy.

        Safe to re-send and to repeat: the copy is made by a script keyed on the stream, group and entry ID, so a
        retry after a lost reply, or the same entry dead-lettered again after a crash left it pending, returns the
        first copy's ID and adds nothing (for :data:`~.streams.DEAD_LETTER_DEDUPE_TTL`). The copy is made before
        the acknowledgement: a failure in between leaves the entry pending, to be read and dead-lettered again.
        ``reason`` lands in the stream as is: keep secrets out of it. Counted in the dead-lettered metric once.
        """
        source = streams.as_key(stream)
        group_key = streams.as_key(group)
        entry_id = streams.as_key(entry.id)
        fields = streams.consumer_dead_letter_fields(source, group_key, entry_id, reason, entry.fields)
        streams.check_field_count(fields, 0, streams.MAX_FIELDS + streams.DLQ_META_FIELDS)
        dlq = streams.DLQ_PREFIX + source
        keys = [dlq, streams.dedupe_key(dlq, group_key + b":" + entry_id, b"ts:dlq:")]
        args = [streams.DEAD_LETTER_DEDUPE_TTL, *streams.items(fields, 0)]
        if entry.traceparent is not None:
            args += [streams.TRACEPARENT, entry.traceparent]  # the copy still leads to its producer
        shape = self._streams.shape("DEAD_LETTER", stream, group, st.DEAD_LETTER)

        async def copy(r: Commands) -> Any:
            st.describe_ids(shape.span, (entry_id,))
            return await streams.DEAD_LETTER.run(r, keys, args)

        copy_id, added = await self._shaped(
            shape, lambda: self._call("DEAD_LETTER", copy, idempotent=True, key=dlq, write=True)
        )
        if added:
            self._telemetry.dead_lettered(1)
        await self.acknowledge_message(stream, group, entry.id)
        return bytes(copy_id)

    async def xautoclaim_stale_messages(
        self,
        stream: Key,
        group: Key,
        consumer: Key,
        *,
        min_idle_ms: int,
        count: int = 100,
        start_id: str | bytes = "0-0",
    ) -> ClaimResult:
        """XAUTOCLAIM: take over entries pending longer than ``min_idle_ms`` in other consumers.

        Re-sent after a lost reply, the second claim finds the entries already idle-reset and owned by
        ``consumer``: they stay pending there and are claimed again once idle, so none is lost.
        """
        shape = self._streams.shape("XAUTOCLAIM", stream, group, st.CLAIM)

        async def claim(r: Commands) -> ClaimResult:
            raw = await r.execute_command("XAUTOCLAIM", stream, group, consumer, min_idle_ms, start_id, "COUNT", count)
            deleted = list(raw[2]) if len(raw) > 2 else []
            result = ClaimResult(next_id=raw[0], messages=streams.entries(raw[1]), deleted_ids=deleted)
            st.on_received(shape.span, result.messages)
            return result

        result = await self._shaped(
            shape, lambda: self._call("XAUTOCLAIM", claim, idempotent=True, key=stream, write=True)
        )
        self._streams.consumed(stream, group, st.CLAIM, len(result.messages))
        return result


async def create_group(r: Commands, stream: Key, group: Key, start_id: str | bytes, mkstream: bool) -> bool:
    """XGROUP CREATE; an existing group (BUSYGROUP) is success, reported as False."""
    args: list[Any] = ["XGROUP", "CREATE", stream, group, start_id]
    if mkstream:
        args.append("MKSTREAM")
    try:
        await r.execute_command(*args)
    except rex.ResponseError as exc:
        if error_code(exc) == "BUSYGROUP":
            return False
        raise
    return True

"""The stream telemetry API of RedisClient: declaring streams, observing consumer groups, ``process`` spans.

See docs/stream-telemetry.md. The command methods that use it live in :mod:`.stream_commands`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Self

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import NonRecordingSpan, Span, Status, StatusCode, TracerProvider

from ..settings import RedisSettings
from ..telemetry import names
from .dispatch import RedisBase
from .endpoints import Key
from .stream_health import StreamHealthMonitor
from .stream_tracing import PROCESS, StreamNames, links_of, producer_context, start_span
from .streams import StreamEntry


class StreamTelemetry(RedisBase):
    """Stream naming, group health and ``process`` spans (mixed into :class:`~trading_shared.RedisClient`)."""

    def __init__(
        self,
        settings: RedisSettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        super().__init__(settings, tracer_provider=tracer_provider, meter_provider=meter_provider)
        self._streams = StreamNames(self._telemetry)
        self._health = StreamHealthMonitor(
            lambda op, key, fn: self._call(op, fn, idempotent=True, key=key), self.settings, self._streams
        )
        for stream, group in self.settings.stream_declarations():
            if group is None:
                self.declare_stream(stream)
            else:
                self.observe_stream(stream, group)
        self._telemetry.observe(streams=self._health.snapshot)

    async def connect(self) -> Self:
        """Connect (see :meth:`RedisBase.connect`); group health is refreshed on this event loop from now on."""
        await super().connect()
        self._health.attach(asyncio.get_running_loop())
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Stop refreshing group health, then close (see :meth:`RedisBase.close`)."""
        await self._health.close()
        await super().close(timeout)

    def declare_stream(self, stream: Key, *groups: Key) -> None:
        """Name ``stream`` (and its consumer ``groups``) in span names, span attributes and metric labels.

        Stream names are Redis keys, so an undeclared stream appears as ``_undeclared``. Declare only streams
        whose names are fine to export and few (at most 200 per client; each is a metric label value).
        """
        self._streams.declare(stream)
        self._streams.prime(stream, None)
        for group in groups:
            self._streams.declare(stream, group)
            self._streams.prime(stream, group)

    def observe_stream(self, stream: Key, group: Key) -> None:
        """Declare ``stream`` and ``group`` (:meth:`declare_stream`) and export the group's health: the
        ``trading_shared.stream.group.lag``, ``.pending`` and ``.oldest_pending_age`` gauges.

        The figures are read in the background, one round trip per stream per metric collection, and never by the
        collection itself (docs/stream-telemetry.md). Idempotent.
        """
        self.declare_stream(stream, group)
        self._health.observe(stream, group)

    async def refresh_stream_health(self) -> None:
        """Read the observed groups' health figures now instead of at the next collection (one round trip per
        stream, each bounded by ``stream_health_timeout``); a stream that cannot be read keeps its last figures."""
        await self._health.refresh()

    @contextmanager
    def process_span(
        self,
        stream: Key,
        group: Key,
        entries: StreamEntry | Sequence[StreamEntry],
        *,
        producer_as_parent: bool = True,
    ) -> Iterator[Span | None]:
        """A ``process`` span (kind CONSUMER) for handling ``entries`` read from ``stream`` by ``group``, current
        inside the block, linked to the span that appended each entry::

            for entry in await r.read_stream_messages("md:ticks", "candles", "worker-1"):
                with r.process_span("md:ticks", "candles", entry):
                    await build_candle(entry.fields)
                await r.acknowledge_message("md:ticks", "candles", entry.id)

        With one entry that carries a producer context and ``producer_as_parent`` (default), the producer's span is
        also the parent, so the work lands in the producer's trace (the tick's trace shows what processed it).
        For a batch (several entries) the span stays in the current trace and links to every producer (at most
        128 links). Entries without a context (appended with ``stream_trace_context`` off, or by another client)
        are processed as before, without a link. An exception leaving the block sets ``error.type`` (its class
        name) and the ERROR status, and is re-raised; its message is not recorded. Yields None while tracing is
        off. The span carries ``messaging.message.id`` for one entry, ``messaging.batch.message_count`` for
        several, and the stream and group as declared (:meth:`declare_stream`) or ``_undeclared``.
        """
        if self._telemetry.tracer() is None:
            yield None
            return
        batch = [entries] if isinstance(entries, StreamEntry) else list(entries)
        parent = None
        if producer_as_parent and len(batch) == 1:
            producer = producer_context(batch[0])
            if producer is not None:
                parent = trace.set_span_in_context(NonRecordingSpan(producer), otel_context.Context())
        shape = self._streams.shape("process", stream, group, PROCESS)
        extra: dict[str, str | int] = (
            {names.MESSAGING_MESSAGE_ID: batch[0].id.decode(errors="replace")}
            if len(batch) == 1
            else {names.MESSAGING_BATCH_MESSAGE_COUNT: len(batch)}
        )
        span = start_span(self._telemetry, shape, extra, context=parent, links=links_of(batch))
        if span is None:
            yield None
            return
        with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
            try:
                yield span
            except BaseException as exc:
                if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                    span.set_attribute(names.ERROR_TYPE, type(exc).__qualname__)
                    span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
                raise

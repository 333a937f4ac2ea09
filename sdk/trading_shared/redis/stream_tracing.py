"""Stream calls as messaging telemetry: span shapes, trace context in entries, stream naming, messaging metrics.

How messaging spans relate to the database spans (docs/stream-telemetry.md): a stream command's own span (XADD,
XREADGROUP, XAUTOCLAIM, XACK, the dead-letter script) IS its messaging span: the pipeline starts it as usual and
:data:`~trading_shared.telemetry.client.SPAN_SHAPE` gives it a messaging kind, name and attributes on top of the
``db.*`` ones, so a stream call still costs one span. ``xadd_bulk`` gets one ``send`` span over its chunk spans (one
per call, not per message), because every message of it must carry a context before its chunks are sent.

Stream names are Redis keys: only streams the caller declared (:meth:`StreamNames.declare`) are named in span names,
attributes and metric labels; any other is :data:`~trading_shared.telemetry.names.UNDECLARED_STREAM`, and so is the
group of an undeclared stream or a group not declared with its stream. The attribute dicts are cached per
(name, group, operation), whose number is bounded by what the caller declared.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util.types import AttributeValue

from ..telemetry import names
from ..telemetry.client import ClientTelemetry, SpanShape
from .streams import MAX_FIELDS, TRACEPARENT, StreamEntry, as_key, entry_time_ms

_log = logging.getLogger(__name__)

#: Most streams (and groups per stream) one client may declare: each is a metric label value.
MAX_DECLARED: Final = 200
#: Most links one receive or process span carries (the OpenTelemetry SDK's default span link limit).
MAX_LINKS: Final = 128

#: The messaging operations: ``(messaging.operation.name, messaging.operation.type, span kind)``.
SEND: Final = ("send", names.MESSAGING_SEND, SpanKind.PRODUCER)
RECEIVE: Final = ("receive", names.MESSAGING_RECEIVE, SpanKind.CLIENT)
CLAIM: Final = ("claim", names.MESSAGING_RECEIVE, SpanKind.CLIENT)
ACK: Final = ("ack", names.MESSAGING_SETTLE, SpanKind.CLIENT)
DEAD_LETTER: Final = ("dead_letter", names.MESSAGING_SETTLE, SpanKind.CLIENT)
PROCESS: Final = ("process", names.MESSAGING_PROCESS, SpanKind.CONSUMER)
Operation = tuple[str, str, SpanKind]

_Attrs = dict[str, AttributeValue]


def format_traceparent(context: SpanContext) -> bytes | None:
    """The W3C ``traceparent`` of ``context`` (version 00), or None when it is not a valid context."""
    if not context.is_valid:
        return None
    return b"00-%032x-%016x-%02x" % (context.trace_id, context.span_id, context.trace_flags)


def parse_traceparent(value: bytes) -> SpanContext | None:
    """The remote span context a ``traceparent`` value names, or None when it is not a valid version-00 one."""
    if len(value) != 55 or value[:3] != b"00-" or value[35:36] != b"-" or value[52:53] != b"-":
        return None
    try:
        trace_id = int(value[3:35], 16)
        span_id = int(value[36:52], 16)
        flags = int(value[53:55], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags))


def producer_context(entry: StreamEntry) -> SpanContext | None:
    """The context of the span that appended ``entry`` (from its ``traceparent`` field, removed on read)."""
    raw = entry.traceparent
    return parse_traceparent(raw) if raw is not None else None


def links_of(entries: Iterable[StreamEntry]) -> list[Link]:
    """A link to each distinct producer context of ``entries`` (at most :data:`MAX_LINKS`)."""
    seen: set[bytes] = set()
    links: list[Link] = []
    for entry in entries:
        raw = entry.traceparent
        if raw is None or raw in seen:
            continue
        seen.add(raw)
        context = parse_traceparent(raw)
        if context is not None:
            links.append(Link(context))
            if len(links) >= MAX_LINKS:
                break
    return links


def with_traceparent(fields: Mapping[Any, Any], value: bytes) -> Mapping[Any, Any]:
    """``fields`` plus the ``traceparent`` field; unchanged when the caller gave one of its own, or when the message
    is empty or at its field limit (validation then reports it as the caller wrote it)."""
    if not fields or TRACEPARENT in fields or "traceparent" in fields or len(fields) >= MAX_FIELDS:
        return fields
    return {**fields, TRACEPARENT: value}


def has_traceparent(fields: Mapping[Any, Any]) -> bool:
    """Whether the caller's ``fields`` carry a ``traceparent`` of their own."""
    return TRACEPARENT in fields or "traceparent" in fields


class StreamNames:
    """The streams (and groups) one client may name in telemetry, and the attribute dicts built from them."""

    def __init__(self, telemetry: ClientTelemetry) -> None:
        self._telemetry = telemetry
        self._streams: dict[bytes, str] = {}
        self._groups: dict[bytes, dict[bytes, str]] = {}
        self._span_attrs: dict[tuple[str, str | None, str], _Attrs] = {}
        self._metric_attrs: dict[tuple[str, str | None, str | None, str | None], dict[str, str]] = {}
        self._span_names: dict[tuple[str, str, str], str] = {}

    def declare(self, stream: str | bytes, group: str | bytes | None = None) -> None:
        """Allow ``stream`` (and ``group`` of it) to be named in telemetry (ValueError past :data:`MAX_DECLARED`)."""
        key = as_key(stream)
        if key not in self._streams:
            if len(self._streams) >= MAX_DECLARED:
                raise ValueError(f"at most {MAX_DECLARED} streams can be named in telemetry")
            self._streams[key] = key.decode(errors="replace")
        if group is not None:
            groups = self._groups.setdefault(key, {})
            group_key = as_key(group)
            if group_key not in groups:
                if len(groups) >= MAX_DECLARED:
                    raise ValueError(f"at most {MAX_DECLARED} groups of one stream can be named in telemetry")
                groups[group_key] = group_key.decode(errors="replace")

    def name(self, stream: str | bytes) -> str:
        """The stream's name in telemetry: its own if declared, else the placeholder."""
        return self._streams.get(as_key(stream), names.UNDECLARED_STREAM)

    def group_name(self, stream: str | bytes, group: str | bytes) -> str:
        """The group's name in telemetry: its own if declared with ``stream``, else the placeholder."""
        groups = self._groups.get(as_key(stream))
        if groups is None:
            return names.UNDECLARED_STREAM
        return groups.get(as_key(group), names.UNDECLARED_STREAM)

    def shape(self, command: str, stream: str | bytes, group: str | bytes | None, op: Operation) -> SpanShape:
        """The shape of the span of one ``command`` call (a new object per call: it receives the span)."""
        dest = self.name(stream)
        group_name = None if group is None else self.group_name(stream, group)
        key = (dest, group_name, op[0])
        attrs = self._span_attrs.get(key)
        if attrs is None:
            attrs = {
                names.MESSAGING_SYSTEM: names.SYSTEM_REDIS,
                names.MESSAGING_OPERATION_NAME: op[0],
                names.MESSAGING_OPERATION_TYPE: op[1],
                names.MESSAGING_DESTINATION_NAME: dest,
            }
            if group_name is not None:
                attrs[names.MESSAGING_CONSUMER_GROUP_NAME] = group_name
            self._span_attrs[key] = attrs
        return SpanShape(command, self.span_name(command, dest), op[2], attrs)

    def span_name(self, first: str, dest: str) -> str:
        """``<first> <stream>`` for a declared stream; for another, ``<first> <db>`` (a command, as every database
        span) or ``<first>`` (a messaging operation: the conventions' name when the destination is not named)."""
        key = (first, dest, "")
        found = self._span_names.get(key)
        if found is None:
            if dest != names.UNDECLARED_STREAM:
                found = f"{first} {dest}"
            elif first.isupper():
                found = f"{first} {self._telemetry.attributes(first)[names.DB_NAMESPACE]}"
            else:
                found = first
            self._span_names[key] = found
        return found

    def metric_attributes(
        self, stream: str | bytes, group: str | bytes | None, op: Operation | None, error_type: str | None = None
    ) -> dict[str, str]:
        """Labels of the messaging metrics (cached; never mutate); ``op`` None: no operation label."""
        dest = self.name(stream)
        group_name = None if group is None else self.group_name(stream, group)
        key = (dest, group_name, None if op is None else op[0], error_type)
        attrs = self._metric_attrs.get(key)
        if attrs is None:
            attrs = {names.MESSAGING_SYSTEM: names.SYSTEM_REDIS, names.MESSAGING_DESTINATION_NAME: dest}
            if op is not None:
                attrs[names.MESSAGING_OPERATION_NAME] = op[0]
            if group_name is not None:
                attrs[names.MESSAGING_CONSUMER_GROUP_NAME] = group_name
            if error_type is not None:
                attrs[names.ERROR_TYPE] = error_type
            self._metric_attrs[key] = attrs
        return attrs

    # -- metrics ------------------------------------------------------------------------------------------------------
    def sent(self, stream: str | bytes, count: int, error: BaseException | None = None) -> None:
        """Count ``count`` messages appended (or, with ``error``, attempted) to ``stream``."""
        try:
            instruments = self._telemetry.instruments()
            if instruments is not None and count:
                error_type = None if error is None else type(error).__qualname__
                instruments.sent_messages.add(count, self.metric_attributes(stream, None, SEND, error_type))
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def consumed(self, stream: str | bytes, group: str | bytes, op: Operation, count: int) -> None:
        """Count ``count`` entries delivered to the client by a read or a claim."""
        try:
            instruments = self._telemetry.instruments()
            if instruments is not None and count:
                instruments.consumed_messages.add(count, self.metric_attributes(stream, group, op))
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def acknowledged(self, stream: str | bytes, group: str | bytes, ids: Iterable[str | bytes]) -> None:
        """Record the age of each acknowledged entry (now minus the append time its ID carries)."""
        try:
            instruments = self._telemetry.instruments()
            if instruments is None:
                return
            attrs = self.metric_attributes(stream, group, None)
            now_ms = time.time() * 1000
            for entry_id in ids:
                appended = entry_time_ms(entry_id)
                if appended is not None:
                    instruments.message_age.record(max(0.0, (now_ms - appended) / 1000), attrs)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def prime(self, stream: str | bytes, group: str | bytes | None) -> None:
        """Export the counters of a declared stream (and group) at 0, so ``increase()`` sees their first event."""
        try:
            instruments = self._telemetry.instruments()
            if instruments is None:
                return
            instruments.sent_messages.add(0, self.metric_attributes(stream, None, SEND))
            if group is not None:
                for op in (RECEIVE, CLAIM):
                    instruments.consumed_messages.add(0, self.metric_attributes(stream, group, op))
        except Exception:
            _log.debug("telemetry failed", exc_info=True)


def current_traceparent(shape: SpanShape) -> bytes | None:
    """The context an appended entry carries: the call's own span, else whatever span is current (the caller's)."""
    span = shape.span
    context = span.get_span_context() if span is not None else trace.get_current_span().get_span_context()
    return format_traceparent(context)


def on_received(span: Span | None, entries: list[StreamEntry]) -> None:
    """Describe a read or claim on its span: how many entries (the ID when one) and a link to each producer."""
    if span is None:
        return
    try:
        if len(entries) == 1:
            span.set_attribute(names.MESSAGING_MESSAGE_ID, entries[0].id.decode(errors="replace"))
        span.set_attribute(names.MESSAGING_BATCH_MESSAGE_COUNT, len(entries))
        for link in links_of(entries):
            span.add_link(link.context)
    except Exception:
        _log.debug("telemetry failed", exc_info=True)


def describe_ids(span: Span | None, ids: tuple[str | bytes, ...]) -> None:
    """The message ID (one) or the batch size (several) of a settle call on its span."""
    if span is None:
        return
    try:
        if len(ids) == 1:
            entry_id = ids[0]
            text = entry_id.decode(errors="replace") if isinstance(entry_id, bytes) else entry_id
            span.set_attribute(names.MESSAGING_MESSAGE_ID, text)
        else:
            span.set_attribute(names.MESSAGING_BATCH_MESSAGE_COUNT, len(ids))
    except Exception:
        _log.debug("telemetry failed", exc_info=True)


def start_span(
    telemetry: ClientTelemetry,
    shape: SpanShape,
    extra: Mapping[str, AttributeValue],
    *,
    context: Context | None = None,
    links: Sequence[Link] = (),
) -> Span | None:
    """Start a messaging span of its own (not a call's span) as ``shape`` says; None while tracing is off or if the
    tracer fails (telemetry never breaks a call)."""
    try:
        tracer = telemetry.tracer()
        if tracer is None:
            return None
        attributes = {**shape.attributes, **extra}
        return tracer.start_span(shape.name, context=context, kind=shape.kind, attributes=attributes, links=links)
    except Exception:
        _log.debug("span start failed", exc_info=True)
        return None


@contextmanager
def active(span: Span | None) -> Iterator[None]:
    """Make ``span`` current inside the block and end it after; an exception sets ``error.type`` (its class name)
    and the ERROR status, never its message (which may quote keys)."""
    if span is None:
        yield
        return
    with trace.use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False):
        try:
            yield
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                span.set_attribute(names.ERROR_TYPE, type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, type(exc).__qualname__))
            raise

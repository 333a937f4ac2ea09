"""Per-client telemetry: the operation span, the duration histogram, retries, breaker and pool figures.

Uses the application's global tracer and meter providers unless explicit ones are given, and keeps asking the
global ones until the application has set them (apps often configure OpenTelemetry after importing libraries).
While no provider is set, each call costs one check of the API's global (see :func:`_global_tracer_provider`) and
nothing else. Every method swallows its own errors: telemetry never breaks a call. Nothing here ever sees query
text, parameters, keys or values.

Hot path (one call through the pipeline): one ``start_span`` with a span name and attribute dict built once per
operation name, one ``Histogram.record`` with a cached dict, one ``span.end()``; a pooled client adds two records of
pool figures. The OpenTelemetry SDK's own work (attribute cleaning and hashing, span bookkeeping) is most of the cost
(docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

from opentelemetry import metrics, trace
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

from ..compat import otel as otel_compat
from . import names
from .instruments import Instruments, PoolStats, StreamHealth, instruments_for

_log = logging.getLogger(__name__)

try:
    _VERSION = version("trading-shared")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    _VERSION = "0.0.0"

# The API's placeholders while the application has set no provider. Named, not taken from get_*_provider() at import
# time: an application that sets its providers BEFORE importing the SDK would otherwise have its own provider's
# class taken for the placeholder, and every client's telemetry would stay off.
_PROXY_TRACER_PROVIDER = trace.ProxyTracerProvider

# While no provider is set, ``trace.get_tracer_provider()`` / ``metrics.get_meter_provider()`` look one up in
# ``os.environ`` on every call (~1.3 us each here, four per pooled operation: most of the SDK's cost when the app has
# no OpenTelemetry SDK). The API keeps the provider it was given in a module global: while that is None and the
# environment names no provider, there is none, and we say so without the look-up. Should a future API version
# rename the global, the look-up finds nothing and the public call is made as before (trading_shared.compat.otel).
_ENV_TRACER_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_ENV_METER_PROVIDER = "OTEL_PYTHON_METER_PROVIDER" in os.environ


def _global_tracer_provider() -> TracerProvider | None:
    """The application's tracer provider, or None while it has set none."""
    if not _ENV_TRACER_PROVIDER and otel_compat.tracer_provider_unset():
        return None
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, _PROXY_TRACER_PROVIDER) else provider


def _global_meter_provider() -> MeterProvider | None:
    """The application's meter provider, or None while it has set none."""
    if not _ENV_METER_PROVIDER and otel_compat.meter_provider_unset():
        return None
    provider = metrics.get_meter_provider()
    return None if otel_compat.is_proxy_meter_provider(provider) else provider


@dataclass(slots=True)
class SpanShape:
    """How the span of one call differs from a plain database span (messaging calls, see
    :mod:`trading_shared.redis.stream_tracing`): set in :data:`SPAN_SHAPE` around the call;
    :meth:`ClientTelemetry.start` applies it to the span of ``operation`` only and stores that span in :attr:`span`."""

    operation: str
    name: str
    kind: SpanKind
    attributes: Mapping[str, AttributeValue]
    suppress: bool = False
    span: Span | None = None


#: The shape of the span the next :meth:`ClientTelemetry.start` of the shape's operation starts (in this context).
SPAN_SHAPE: ContextVar[SpanShape | None] = ContextVar("trading_shared_span_shape", default=None)


class ClientTelemetry:
    """Spans and metrics of one client. Attribute dicts are built once per operation name and reused."""

    def __init__(
        self,
        *,
        system: str,
        pool_name: str,
        namespace: str,
        address: str,
        port: int,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        record_exceptions: bool = False,
    ) -> None:
        # record_exceptions=True adds exception events with the message and traceback. Off by default: driver
        # messages can quote parameters (asyncpg's DataError shows the argument) or keys (Redis NOGROUP), so by
        # default a failed span carries an exception event with exception.type only, plus error.type,
        # db.response.status_code and its ERROR status.
        self._record_exceptions = record_exceptions
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._tracer: Tracer | None = None
        self._instruments: Instruments | None = None
        self._namespace = namespace
        self._base: dict[str, str | int] = {
            names.DB_SYSTEM_NAME: system,
            names.DB_NAMESPACE: namespace,
            names.SERVER_ADDRESS: address,
            names.SERVER_PORT: port,
            names.POOL_NAME: pool_name,
        }
        self.pool_attributes: dict[str, str] = {names.DB_SYSTEM_NAME: system, names.POOL_NAME: pool_name}
        self._op_attrs: dict[str, dict[str, str | int]] = {}
        self._span_names: dict[str, str] = {}
        self._pool_source: Callable[[], PoolStats | None] | None = None
        self._breaker_source: Callable[[], Iterable[tuple[dict[str, str], str]]] | None = None
        self._stream_source: Callable[[], Iterable[StreamHealth]] | None = None

    # -- provider resolution -------------------------------------------------------------------------------------------
    def tracer(self) -> Tracer | None:
        """The tracer, or None while the application has set no tracer provider."""
        if self._tracer is None:
            provider = self._tracer_provider or _global_tracer_provider()
            if provider is None:
                return None
            self._tracer = provider.get_tracer(names.INSTRUMENTATION_SCOPE, _VERSION)
        return self._tracer

    def instruments(self) -> Instruments | None:
        """The instruments, or None while the application has set no meter provider."""
        if self._instruments is None:
            provider = self._meter_provider or _global_meter_provider()
            if provider is None:
                return None
            try:
                self._instruments = instruments_for(provider, _VERSION)
                self._instruments.register(self)
                self._prime(self._instruments)
            except Exception:
                _log.exception("could not create metric instruments; metrics are off for this client")
                return None
        return self._instruments

    def attributes(self, operation: str) -> dict[str, str | int]:
        """The attributes every span and data point of ``operation`` carries (cached; never mutate)."""
        attrs = self._op_attrs.get(operation)
        if attrs is None:
            attrs = {**self._base, names.DB_OPERATION_NAME: operation}
            self._op_attrs[operation] = attrs
        return attrs

    def set_server(self, address: str, port: int) -> None:
        """Name the server the client now talks to (a multi-host DSN's host that answered, after a failover)."""
        if self._base[names.SERVER_ADDRESS] == address and self._base[names.SERVER_PORT] == port:
            return
        self._base = {**self._base, names.SERVER_ADDRESS: address, names.SERVER_PORT: port}
        self._op_attrs = {}  # new dicts: calls in flight keep the ones they hold

    def _prime(self, instruments: Instruments) -> None:
        """Export this client's event counters at 0 from the start, so ``increase()`` sees their first event."""
        for state in (names.BREAKER_OPEN, names.BREAKER_HALF_OPEN, names.BREAKER_CLOSED):
            instruments.transitions.add(0, {**self.pool_attributes, names.BREAKER_STATE_ATTR: state})
        instruments.rejections.add(0, self.pool_attributes)
        instruments.timeouts.add(0, self.pool_attributes)
        instruments.dead_lettered.add(0, self.pool_attributes)
        if self.pool_attributes[names.DB_SYSTEM_NAME] == names.SYSTEM_REDIS:
            instruments.master_changes.add(0, self.pool_attributes)
            instruments.resubscribes.add(0, self.pool_attributes)

    # -- the operation -----------------------------------------------------------------------------------------------
    def start(self, operation: str) -> Span | None:
        """Start the CLIENT span of one logical operation (None when tracing is off)."""
        try:
            tracer = self._tracer or self.tracer()
            if tracer is None:
                return None
            shape = SPAN_SHAPE.get()
            if shape is not None and shape.operation == operation:
                return self._start_shaped(tracer, shape)
            name = self._span_names.get(operation)
            if name is None:
                name = self._span_names[operation] = f"{operation} {self._namespace}"
            return tracer.start_span(name, kind=SpanKind.CLIENT, attributes=self.attributes(operation))
        except Exception:
            _log.debug("span start failed", exc_info=True)
            return None

    def _start_shaped(self, tracer: Tracer, shape: SpanShape) -> Span | None:
        if shape.suppress:
            return None
        attributes = {**self.attributes(shape.operation), **shape.attributes}
        shape.span = tracer.start_span(shape.name, kind=shape.kind, attributes=attributes)
        return shape.span

    def end(
        self,
        span: Span | None,
        operation: str,
        seconds: float,
        *,
        error: BaseException | None = None,
        error_type: str | None = None,
        status_code: str | None = None,
        attempts: int = 1,
    ) -> None:
        """Record the operation's duration and end its span; ``error_type`` set means it failed."""
        try:
            attrs = self.attributes(operation)
            if error_type is not None:
                attrs = {**attrs, names.ERROR_TYPE: error_type}
                if status_code is not None:
                    attrs[names.DB_RESPONSE_STATUS_CODE] = status_code
            instruments = self._instruments or self.instruments()
            if instruments is not None:
                instruments.duration.record(seconds, attrs)
            if span is not None:
                if attempts > 1:
                    span.set_attribute(names.ATTEMPTS, attempts)
                if error_type is not None:
                    span.set_attribute(names.ERROR_TYPE, error_type)
                    if status_code is not None:
                        span.set_attribute(names.DB_RESPONSE_STATUS_CODE, status_code)
                    if error is not None and error_type != names.ERROR_CANCELLED:
                        if self._record_exceptions:
                            span.record_exception(error, escaped=True)
                        else:
                            span.add_event("exception", {"exception.type": type(error).__qualname__})
                    span.set_status(Status(StatusCode.ERROR, error_type))
                span.end()
        except Exception:
            _log.debug("telemetry end failed", exc_info=True)

    def cancelled(self, span: Span | None) -> None:
        """Mark the span of an operation whose task was cancelled."""
        if span is not None:
            try:
                span.add_event(names.EVENT_CANCELLED)
            except Exception:
                _log.debug("telemetry failed", exc_info=True)

    def attempt_failed(
        self,
        span: Span | None,
        operation: str,
        *,
        attempt: int,
        error_type: str,
        fault: str,
        delay: float | None,
    ) -> None:
        """An attempt failed: a span event, and a retry count when another attempt follows (``delay`` not None)."""
        try:
            if span is not None:
                event: dict[str, str | int | float] = {
                    names.ATTEMPT: attempt,
                    names.ERROR_TYPE: error_type,
                    names.FAULT: fault,
                }
                if delay is not None:
                    event[names.RETRY_DELAY] = delay
                span.add_event(names.EVENT_ATTEMPT_FAILED, event)
            if delay is not None:
                instruments = self.instruments()
                if instruments is not None:
                    retry_attrs = {
                        names.DB_SYSTEM_NAME: self.pool_attributes[names.DB_SYSTEM_NAME],
                        names.POOL_NAME: self.pool_attributes[names.POOL_NAME],
                        names.DB_OPERATION_NAME: operation,
                        names.ERROR_TYPE: error_type,
                    }
                    instruments.retries.add(1, retry_attrs)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    @contextmanager
    def activate(self, span: Span | None) -> Iterator[None]:
        """Make ``span`` current (so statement-level child spans nest under it)."""
        if span is None:
            yield
            return
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield

    # -- breaker -----------------------------------------------------------------------------------------------------
    def breaker_transition(self, new_state: str) -> None:
        """Count a breaker transition into ``new_state``."""
        self._add("transitions", {**self.pool_attributes, names.BREAKER_STATE_ATTR: new_state})

    def breaker_rejected(self, operation: str) -> None:
        """Count a call the open breaker rejected."""
        self._add("rejections", {**self.pool_attributes, names.DB_OPERATION_NAME: operation})

    def master_changed(self) -> None:
        """Count a move to another master (sentinel mode)."""
        self._add("master_changes", self.pool_attributes)

    def resubscribed(self, gap: float, attempts: int) -> None:
        """A pub/sub subscription is back after ``gap`` seconds without a connection: a count and a SUBSCRIBE span
        carrying a ``trading_shared.resubscribed`` event (messages published in the gap were not received)."""
        self._add("resubscribes", self.pool_attributes)
        span = self.start("SUBSCRIBE")
        if span is not None:
            try:
                span.add_event(names.EVENT_RESUBSCRIBED, {names.GAP: gap, names.ATTEMPTS: attempts})
                span.end()
            except Exception:
                _log.debug("telemetry failed", exc_info=True)

    def dead_lettered(self, count: int) -> None:
        """Count messages written to a dead-letter stream."""
        self._add("dead_lettered", self.pool_attributes, count)

    # -- pool --------------------------------------------------------------------------------------------------------
    def observe(
        self,
        pool: Callable[[], PoolStats | None] | None = None,
        breakers: Callable[[], Iterable[tuple[dict[str, str], str]]] | None = None,
        streams: Callable[[], Iterable[StreamHealth]] | None = None,
    ) -> None:
        """Set where the observable callbacks read this client's pool figures, breaker states and stream health."""
        if pool is not None:
            self._pool_source = pool
        if breakers is not None:
            self._breaker_source = breakers
        if streams is not None:
            self._stream_source = streams
        instruments = self.instruments()
        if instruments is not None:
            instruments.register(self)

    def pool_stats(self) -> PoolStats | None:
        """Current pool figures (read by the metrics exporter's thread)."""
        return self._pool_source() if self._pool_source is not None else None

    def breaker_states(self) -> Iterable[tuple[dict[str, str], str]]:
        """Breaker states (read by the metrics exporter's thread)."""
        return self._breaker_source() if self._breaker_source is not None else ()

    def stream_health(self) -> Iterable[StreamHealth]:
        """Figures of the stream groups the client observes (read by the metrics exporter's thread; never blocks)."""
        return self._stream_source() if self._stream_source is not None else ()

    def pool_wait(self, seconds: float) -> None:
        """Record the time one acquisition waited."""
        try:
            instruments = self._instruments or self.instruments()
            if instruments is not None:
                instruments.wait_time.record(seconds, self.pool_attributes)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def pool_use(self, seconds: float) -> None:
        """Record how long one connection was borrowed."""
        try:
            instruments = self._instruments or self.instruments()
            if instruments is not None:
                instruments.use_time.record(seconds, self.pool_attributes)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def pool_create(self, seconds: float) -> None:
        """Record the time to open one connection."""
        self._record("create_time", seconds)

    def pool_timeout(self) -> None:
        """Count an acquisition that timed out or found the pool exhausted."""
        self._add("timeouts", self.pool_attributes)

    def close(self) -> None:
        """Stop reporting this client's pool and breakers."""
        if self._instruments is not None:
            self._instruments.unregister(self)

    def _record(self, instrument: str, seconds: float) -> None:
        try:
            instruments = self.instruments()
            if instruments is not None:
                getattr(instruments, instrument).record(seconds, self.pool_attributes)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

    def _add(self, instrument: str, attrs: dict[str, str], amount: int = 1) -> None:
        try:
            instruments = self.instruments()
            if instruments is not None:
                getattr(instruments, instrument).add(amount, attrs)
        except Exception:
            _log.debug("telemetry failed", exc_info=True)

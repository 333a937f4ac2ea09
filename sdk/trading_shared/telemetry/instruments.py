"""The SDK's metric instruments, created once per meter provider and shared by every client that uses it.

Creating the same observable instrument twice on one meter would drop the second client's callback, so each
meter provider gets one :class:`Instruments`, whose observable callbacks walk the live clients registered with it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from . import names

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of one client's connection pool."""

    idle: int
    used: int
    max: int
    pending: int


@dataclass(frozen=True, slots=True)
class StreamHealth:
    """The last figures read for one observed stream consumer group (``attributes``: system, stream, group).

    ``lag`` is None when the server does not know it (entries deleted or trimmed before the group read them)."""

    attributes: dict[str, str]
    lag: int | None
    pending: int
    oldest_pending_age: float


class ObservedClient(Protocol):
    """What an observable callback reads from a client (implemented by ClientTelemetry)."""

    pool_attributes: dict[str, str]

    def pool_stats(self) -> PoolStats | None:
        """Current pool figures, or None when the client has no pool."""

    def breaker_states(self) -> Iterable[tuple[dict[str, str], str]]:
        """``(attributes, state)`` for each breaker of the client."""

    def stream_health(self) -> Iterable[StreamHealth]:
        """The last figures of each stream group the client observes (cached: never waits on a server)."""


class Instruments:
    """Every instrument of one meter: histograms and counters for the hot path, observables for pools and breakers."""

    def __init__(self, meter: Meter) -> None:
        self._clients: weakref.WeakSet[ObservedClient] = weakref.WeakSet()
        self._lock = threading.Lock()
        buckets = list(names.DURATION_BUCKETS)
        self.duration = meter.create_histogram(
            names.OPERATION_DURATION,
            unit=names.UNIT_SECONDS,
            description="Duration of database client operations, retries included.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.retries = meter.create_counter(
            names.RETRIES, unit=names.UNIT_RETRY, description="Attempts re-sent after a transient failure."
        )
        self.transitions = meter.create_counter(
            names.BREAKER_TRANSITIONS,
            unit=names.UNIT_TRANSITION,
            description="Circuit breaker state changes, labelled with the new state.",
        )
        self.rejections = meter.create_counter(
            names.BREAKER_REJECTIONS, unit=names.UNIT_CALL, description="Calls rejected without I/O by an open breaker."
        )
        self.dead_lettered = meter.create_counter(
            names.DEAD_LETTERED, unit=names.UNIT_MESSAGE, description="Messages written to a dead-letter stream."
        )
        self.master_changes = meter.create_counter(
            names.MASTER_CHANGES,
            unit=names.UNIT_CHANGE,
            description="Times a Redis client in sentinel mode moved to another master (failovers it followed).",
        )
        self.resubscribes = meter.create_counter(
            names.RESUBSCRIBES,
            unit=names.UNIT_RECONNECT,
            description="Times a Redis pub/sub subscription re-subscribed after its connection was lost.",
        )
        self.summary_overflow = meter.create_counter(
            names.QUERY_SUMMARY_OVERFLOW,
            unit=names.UNIT_CALL,
            description="Calls recorded with db.query.summary=_OTHER: the client had reached its cap of distinct "
            "summaries.",
        )
        self.timeouts = meter.create_counter(
            names.CONNECTION_TIMEOUTS,
            unit=names.UNIT_TIMEOUT,
            description="Connection acquisitions that timed out or found the pool exhausted.",
        )
        self.wait_time = meter.create_histogram(
            names.CONNECTION_WAIT_TIME,
            unit=names.UNIT_SECONDS,
            description="Time to obtain a connection from the pool.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.use_time = meter.create_histogram(
            names.CONNECTION_USE_TIME,
            unit=names.UNIT_SECONDS,
            description="Time between borrowing a connection and returning it.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.create_time = meter.create_histogram(
            names.CONNECTION_CREATE_TIME,
            unit=names.UNIT_SECONDS,
            description="Time to open a new connection.",
            explicit_bucket_boundaries_advisory=buckets,
        )
        self.sent_messages = meter.create_counter(
            names.MESSAGING_SENT_MESSAGES, unit=names.UNIT_MESSAGE, description="Messages appended to streams."
        )
        self.consumed_messages = meter.create_counter(
            names.MESSAGING_CONSUMED_MESSAGES,
            unit=names.UNIT_MESSAGE,
            description="Stream entries delivered to the client by consumer-group reads and claims.",
        )
        self.message_age = meter.create_histogram(
            names.STREAM_MESSAGE_AGE,
            unit=names.UNIT_SECONDS,
            description="Time from a stream entry's append (its ID) to its acknowledgement.",
            explicit_bucket_boundaries_advisory=list(names.MESSAGE_AGE_BUCKETS),
        )
        meter.create_observable_gauge(
            names.STREAM_GROUP_LAG,
            callbacks=[self._observe_lag],
            unit=names.UNIT_MESSAGE,
            description="Entries of the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
        )
        meter.create_observable_gauge(
            names.STREAM_GROUP_PENDING,
            callbacks=[self._observe_stream_pending],
            unit=names.UNIT_MESSAGE,
            description="Entries delivered to the consumer group and not yet acknowledged.",
        )
        meter.create_observable_gauge(
            names.STREAM_GROUP_OLDEST_PENDING_AGE,
            callbacks=[self._observe_oldest_pending],
            unit=names.UNIT_SECONDS,
            description="Age (since its append) of the oldest entry pending in the consumer group; 0 when none is.",
        )
        meter.create_observable_up_down_counter(
            names.CONNECTION_COUNT,
            callbacks=[self._observe_count],
            unit=names.UNIT_CONNECTION,
            description="Connections in the pool, by state (idle or used).",
        )
        meter.create_observable_up_down_counter(
            names.CONNECTION_MAX,
            callbacks=[self._observe_max],
            unit=names.UNIT_CONNECTION,
            description="The most connections the pool may open.",
        )
        meter.create_observable_up_down_counter(
            names.CONNECTION_PENDING_REQUESTS,
            callbacks=[self._observe_pending],
            unit=names.UNIT_REQUEST,
            description="Callers waiting for a connection.",
        )
        meter.create_observable_gauge(
            names.BREAKER_STATE,
            callbacks=[self._observe_breakers],
            unit=names.UNIT_STATE,
            description="1 for the breaker's current state, 0 for the others.",
        )

    def register(self, client: ObservedClient) -> None:
        """Include ``client`` in the observable callbacks until it is garbage collected or unregistered."""
        with self._lock:
            self._clients.add(client)

    def unregister(self, client: ObservedClient) -> None:
        """Stop observing ``client``."""
        with self._lock:
            self._clients.discard(client)

    def _snapshot(self) -> list[ObservedClient]:
        with self._lock:
            return list(self._clients)

    def _pools(self) -> Iterator[tuple[dict[str, str], PoolStats]]:
        for client in self._snapshot():
            try:
                stats = client.pool_stats()
            except Exception:
                _log.debug("pool stats unavailable", exc_info=True)
                continue
            if stats is not None:
                yield client.pool_attributes, stats

    def _observe_count(self, _: CallbackOptions) -> Iterable[Observation]:
        out = []
        for attrs, stats in self._pools():
            out.append(Observation(stats.idle, {**attrs, names.CONNECTION_STATE: names.STATE_IDLE}))
            out.append(Observation(stats.used, {**attrs, names.CONNECTION_STATE: names.STATE_USED}))
        return out

    def _observe_max(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(stats.max, attrs) for attrs, stats in self._pools()]

    def _observe_pending(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(stats.pending, attrs) for attrs, stats in self._pools()]

    def _observe_breakers(self, _: CallbackOptions) -> Iterable[Observation]:
        out = []
        for client in self._snapshot():
            try:
                states = list(client.breaker_states())
            except Exception:
                _log.debug("breaker state unavailable", exc_info=True)
                continue
            for attrs, current in states:
                for state in (names.BREAKER_CLOSED, names.BREAKER_OPEN, names.BREAKER_HALF_OPEN):
                    value = 1 if state == current else 0
                    out.append(Observation(value, {**attrs, names.BREAKER_STATE_ATTR: state}))
        return out


    def _streams(self) -> list[StreamHealth]:
        out: list[StreamHealth] = []
        for client in self._snapshot():
            try:
                out.extend(client.stream_health())
            except Exception:
                _log.debug("stream health unavailable", exc_info=True)
        return out

    def _observe_lag(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(h.lag, h.attributes) for h in self._streams() if h.lag is not None]

    def _observe_stream_pending(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(h.pending, h.attributes) for h in self._streams()]

    def _observe_oldest_pending(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(h.oldest_pending_age, h.attributes) for h in self._streams()]


_by_provider: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()
_by_provider_lock = threading.Lock()


def instruments_for(provider: MeterProvider, version: str) -> Instruments:
    """The shared :class:`Instruments` of ``provider``, created on first use."""
    with _by_provider_lock:
        found = _by_provider.get(provider)
        if found is None:
            found = Instruments(provider.get_meter(names.INSTRUMENTATION_SCOPE, version))
            _by_provider[provider] = found
        return found

"""A stand-in for a process using the SDK: exposes the SDK's series (names from the names module) over HTTP.

It lets the alert rules and dashboard queries run end to end against a real Prometheus without databases. The
series and labels are those opentelemetry-exporter-prometheus produces for the SDK's instruments.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

import dashboards.metrics as metrics
from dashboards.metrics import L, names

_SYSTEM_POOL = (L.SYSTEM, L.POOL)


def _base(series: str) -> str:
    """prometheus_client adds the suffixes itself."""
    for suffix in ("_total", "_count"):
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


class StubExporter:
    """Series of some clients, ``(system, pool name)`` each; breakers start closed."""

    def __init__(self, clients: Sequence[tuple[str, str]]) -> None:
        self.clients = dict((pool, system) for system, pool in clients)
        r = self.registry = CollectorRegistry()
        buckets = names.DURATION_BUCKETS
        self.state = Gauge(metrics.BREAKER_STATE, "breaker state", (*_SYSTEM_POOL, L.BREAKER_STATE), registry=r)
        self.transitions = Counter(
            _base(metrics.BREAKER_TRANSITIONS), "transitions", (*_SYSTEM_POOL, L.BREAKER_STATE), registry=r
        )
        self.rejections = Counter(
            _base(metrics.BREAKER_REJECTIONS), "rejections", (*_SYSTEM_POOL, L.OPERATION), registry=r
        )
        self.duration = Histogram(
            _base(metrics.OPERATION_DURATION.count),
            "duration",
            (*_SYSTEM_POOL, L.OPERATION, L.QUERY_SUMMARY, L.ERROR),
            buckets=buckets,
            registry=r,
        )
        self.retries = Counter(_base(metrics.RETRIES), "retries", (*_SYSTEM_POOL, L.OPERATION, L.ERROR), registry=r)
        self.connections = Gauge(metrics.CONNECTION_COUNT, "count", (*_SYSTEM_POOL, L.CONNECTION_STATE), registry=r)
        self.max = Gauge(metrics.CONNECTION_MAX, "max", _SYSTEM_POOL, registry=r)
        self.pending = Gauge(metrics.CONNECTION_PENDING, "pending", _SYSTEM_POOL, registry=r)
        self.timeouts = Counter(_base(metrics.CONNECTION_TIMEOUTS), "timeouts", _SYSTEM_POOL, registry=r)
        self.dead_lettered = Counter(_base(metrics.DEAD_LETTERED), "dead letters", _SYSTEM_POOL, registry=r)
        self.overflow = Counter(_base(metrics.QUERY_SUMMARY_OVERFLOW), "overflow", _SYSTEM_POOL, registry=r)
        group = (L.STREAM, L.GROUP)
        self.lag = Gauge(metrics.STREAM_GROUP_LAG, "lag", group, registry=r)
        self.stream_pending = Gauge(metrics.STREAM_GROUP_PENDING, "pending", group, registry=r)
        self.oldest_pending = Gauge(metrics.STREAM_OLDEST_PENDING_AGE, "oldest pending age", group, registry=r)
        self.message_age = Histogram(
            _base(metrics.STREAM_MESSAGE_AGE.count), "message age", group, buckets=(0.01, 0.1, 1.0, 10.0), registry=r
        )
        self.sent = Counter(_base(metrics.MESSAGES_SENT), "sent", (L.STREAM, L.ERROR), registry=r)
        self.consumed = Counter(_base(metrics.MESSAGES_CONSUMED), "consumed", group, registry=r)
        self.pool_times = [
            Histogram(_base(h.count), "pool time", _SYSTEM_POOL, buckets=buckets, registry=r)
            for h in (metrics.CONNECTION_WAIT_TIME, metrics.CONNECTION_USE_TIME, metrics.CONNECTION_CREATE_TIME)
        ]
        self._current: dict[str, str] = {}
        for pool in self.clients:
            self._show_state(pool, names.BREAKER_CLOSED)
        self._server, self._thread = start_http_server(0, addr="127.0.0.1", registry=r)
        self.address = f"127.0.0.1:{self._server.server_port}"

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _show_state(self, pool: str, state: str) -> None:
        self._current[pool] = state
        for s in (names.BREAKER_CLOSED, names.BREAKER_OPEN, names.BREAKER_HALF_OPEN):
            self.state.labels(self.clients[pool], pool, s).set(1 if s == state else 0)

    def set_breaker(self, pool: str, state: str) -> None:
        """Move the breaker to ``state``, counting the transition as the SDK does."""
        if state != self._current[pool]:
            self.transitions.labels(self.clients[pool], pool, state).inc()
        self._show_state(pool, state)

    def flash_open(self, pool: str) -> None:
        """Open, half-open and close again between two scrapes: only the transitions counter shows it."""
        for state in (names.BREAKER_OPEN, names.BREAKER_HALF_OPEN, names.BREAKER_CLOSED):
            self.transitions.labels(self.clients[pool], pool, state).inc()

    def traffic(self, pool: str, operation: str) -> None:
        """Some of everything: calls ok and failed, retries, rejections, pool figures, timeouts, dead letters."""
        system = self.clients[pool]
        summary = f"{operation} instruments" if system == names.SYSTEM_POSTGRESQL else ""
        for _ in range(5):
            self.duration.labels(system, pool, operation, summary, "").observe(0.002)
        self.duration.labels(system, pool, operation, summary, "ConnectionResetError").observe(0.3)
        self.duration.labels(system, pool, operation, summary, names.ERROR_CIRCUIT_OPEN).observe(0.00001)
        self.overflow.labels(system, pool).inc()
        self.retries.labels(system, pool, operation, "ConnectionResetError").inc()
        self.rejections.labels(system, pool, operation).inc()
        self.transitions.labels(system, pool, names.BREAKER_OPEN).inc(0)
        self.connections.labels(system, pool, names.STATE_USED).set(3)
        self.connections.labels(system, pool, names.STATE_IDLE).set(1)
        self.max.labels(system, pool).set(4)
        self.pending.labels(system, pool).set(2)
        self.timeouts.labels(system, pool).inc()
        self.dead_lettered.labels(system, pool).inc()
        for histogram in self.pool_times:
            histogram.labels(system, pool).observe(0.001)

    def statements(self, pool: str, count: int) -> None:
        """Calls of ``count`` distinct statements (``SELECT t0`` ...), a few of them failed."""
        system = self.clients[pool]
        for i in range(count):
            self.duration.labels(system, pool, "SELECT", f"SELECT t{i}", "").observe(0.001 * (i + 1))
            if i % 2 == 0:
                self.duration.labels(system, pool, "SELECT", f"SELECT t{i}", "57014").observe(0.5)

    def stream(self, stream: str, group: str) -> None:
        """A consumer group with a backlog: lag, pending entries and their age, entries sent, consumed, acknowledged."""
        self.lag.labels(stream, group).set(120)
        self.stream_pending.labels(stream, group).set(10)
        self.oldest_pending.labels(stream, group).set(1.5)
        self.message_age.labels(stream, group).observe(0.02)
        self.sent.labels(stream, "").inc(50)
        self.consumed.labels(stream, group).inc(40)

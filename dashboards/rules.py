"""The Prometheus alert rules, built from the names module and :class:`dashboards.config.AlertConfig`.

The rendered file (``dashboards/alerts/trading-shared.rules.yml``) is the source of truth for alerting: it is what
Prometheus loads, what ``promtool test rules`` tests and what the Grafana-managed alerts are derived from.

Every rule aggregates by job + instance + client (connection pool name): one alert per client per process, and two
services whose clients share a name never collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dashboards import config
from dashboards import promql as q
from dashboards.metrics import (
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    CONNECTION_COUNT,
    CONNECTION_MAX,
    CONNECTION_PENDING,
    CONNECTION_TIMEOUTS,
    DEAD_LETTERED,
    MESSAGES_CONSUMED,
    MESSAGES_SENT,
    OPERATION_DURATION,
    RETRIES,
    STREAM_GROUP_LAG,
    STREAM_GROUP_PENDING,
    STREAM_OLDEST_PENDING_AGE,
    L,
    names,
)
from dashboards.queries import ERRORS

BREAKER_OPEN = "TradingSharedCircuitBreakerOpen"
BREAKER_FLAPPING = "TradingSharedCircuitBreakerFlapping"
RETRY_STORM = "TradingSharedRetryStorm"
HIGH_ERROR_RATIO = "TradingSharedHighErrorRatio"
POOL_SATURATED = "TradingSharedConnectionPoolSaturated"
ACQUIRE_TIMEOUTS = "TradingSharedConnectionAcquireTimeouts"
HIGH_LATENCY = "TradingSharedHighLatencyP99"
MESSAGES_DEAD_LETTERED = "TradingSharedMessagesDeadLettered"
STREAM_PENDING_STUCK = "TradingSharedStreamPendingStuck"
STREAM_LAG_GROWING = "TradingSharedStreamLagGrowing"

#: The labels every alert carries (besides severity): which client, in which process.
BY = (L.JOB, L.INSTANCE, L.POOL)
#: The labels of the stream alerts: the consumer group of a stream, in the process that observes it (the group's
#: figures carry no client: they describe the group on the server, whichever client reads them).
BY_STREAM = (L.JOB, L.INSTANCE, L.STREAM, L.GROUP)
#: The stream alerts join producers' and consumers' counters to a group's figures by stream (and group) alone: a
#: stream's producers and consumers usually run in other processes, often in other jobs, than its observer.
STREAM_JOIN = (L.STREAM, L.GROUP)


def runbook_anchor(alert: str) -> str:
    """Anchor of an alert's section in runbook.md (GitHub slug of a ``## <alert>`` heading)."""
    return alert.lower()


def _t(label: str) -> str:
    return "{{ $labels." + label + " }}"


_WHERE = f"{_t(L.POOL)} (job {_t(L.JOB)}, instance {_t(L.INSTANCE)})"
_GROUP = f"group {_t(L.GROUP)} of stream {_t(L.STREAM)} (observed by job {_t(L.JOB)}, instance {_t(L.INSTANCE)})"


@dataclass(frozen=True)
class Rule:
    """One alerting rule."""

    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str

    def to_dict(self, runbook_base_url: str = config.RUNBOOK_BASE_URL) -> dict[str, Any]:
        """The rule as it appears in a Prometheus rule file, its ``runbook_url`` under ``runbook_base_url``."""
        return {
            "alert": self.alert,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {
                "summary": self.summary,
                "description": self.description,
                "runbook_url": f"{runbook_base_url}#{runbook_anchor(self.alert)}",
            },
        }


class _Exprs:
    """PromQL of each rule under one AlertConfig."""

    def __init__(self, cfg: config.AlertConfig) -> None:
        self.cfg = cfg

    def s(self, metric: str, *extra: str) -> str:
        return q.sel(metric, (*self.cfg.job_matchers, *extra))

    def by(self, op: str, expr: str) -> str:
        return q.agg(op, BY, expr)

    def occurred(self, counter: str, window: str, *extra: str) -> str:
        """Series of clients whose ``counter`` grew within ``window``.

        OpenTelemetry creates a counter's series at its first increment, so the first event of a process shows up as
        a series that appears with value 1: ``increase()`` cannot see that step. The second branch catches it: the
        series is younger than ``window`` and the client's breaker-state gauge (scraped with it) is older than the
        series. A target scraped for the first time with old counts does not fire: its gauge is as young.
        """
        c = self.s(counter, *extra)
        on = q.on(BY)
        new = f"({self.by('sum', c)} > 0)\n    unless {on}\n  {self.by('sum', f'{c} offset {window}')}"
        gauge_older = (
            f"{self.by('max', f'count_over_time({self.s(BREAKER_STATE)}[{window}])')}\n    > {on}\n"
            f"  {self.by('max', f'count_over_time({c}[{window}])')}"
        )
        return f"{self.by('sum', q.increase(c, window))} > 0\nor\n(\n  {new}\n)\n  and {on}\n(\n  {gauge_older}\n)"

    def rate(self, metric: str, *extra: str) -> str:
        return self.by("sum", q.rate(self.s(metric, *extra), self.cfg.rate_window))


def _breaker_rules(e: _Exprs) -> list[Rule]:
    cfg = e.cfg
    not_closed = q.one_of(L.BREAKER_STATE, (names.BREAKER_OPEN, names.BREAKER_HALF_OPEN))
    opened = q.eq(L.BREAKER_STATE, names.BREAKER_OPEN)
    closed = q.eq(L.BREAKER_STATE, names.BREAKER_CLOSED)
    flap = cfg.flapping_window
    return [
        Rule(
            BREAKER_OPEN,
            f"{e.by('max', e.s(BREAKER_STATE, not_closed))} > 0\nor\n"
            + e.occurred(BREAKER_TRANSITIONS, cfg.breaker_open_window, opened),
            cfg.breaker_open_for,
            cfg.breaker_open_severity,
            f"Circuit breaker of {_t(L.POOL)} is open on {_t(L.INSTANCE)}",
            f"The circuit breaker of client {_WHERE} is open or half-open, or opened within the last "
            f"{cfg.breaker_open_window}. While open, calls fail fast without reaching the database.",
        ),
        Rule(
            BREAKER_FLAPPING,
            f"{e.by('sum', q.increase(e.s(BREAKER_TRANSITIONS, opened), flap))} >= {cfg.flapping_min_opens}\n"
            f"  and {q.on(BY)}\n"
            f"{e.by('sum', q.increase(e.s(BREAKER_TRANSITIONS, closed), flap))} >= {cfg.flapping_min_opens - 1}",
            cfg.flapping_for,
            cfg.flapping_severity,
            f"Circuit breaker of {_t(L.POOL)} is flapping on {_t(L.INSTANCE)}",
            f"The circuit breaker of client {_WHERE} opened and closed again at least {cfg.flapping_min_opens} "
            f"times in {flap}: the database is intermittently failing.",
        ),
    ]


def _traffic_rules(e: _Exprs) -> list[Rule]:
    cfg = e.cfg
    calls = e.rate(OPERATION_DURATION.count)
    retries = e.rate(RETRIES)
    on = q.on(BY)
    # Blocking reads wait on purpose (their duration includes the block time): they would keep the alert firing.
    waiting = q.not_regex(L.OPERATION, "|".join(sorted(names.BLOCKING_OPERATIONS)))
    latency = "\nor\n".join(
        f"{q.quantile(0.99, e.s(OPERATION_DURATION.bucket, q.eq(L.SYSTEM, db), waiting), BY, cfg.rate_window)}"
        f" > {threshold:g}"
        for db, threshold in sorted(cfg.latency_p99_seconds.items())
    )
    limits = ", ".join(f"{system} {threshold:g}s" for system, threshold in sorted(cfg.latency_p99_seconds.items()))
    return [
        Rule(
            RETRY_STORM,
            f"{retries}\n  /\n{calls}\n  > {cfg.retry_ratio:g}\nand {on}\n{retries} > {cfg.retry_min_rate:g}",
            cfg.retry_for,
            cfg.retry_severity,
            f"Retry storm on {_t(L.POOL)} ({_t(L.INSTANCE)})",
            f"Client {_WHERE} retries {{{{ $value | humanize }}}} times per call (more than {cfg.retry_ratio:g}) over "
            f"the last {cfg.rate_window}: the database or the network is failing transiently.",
        ),
        Rule(
            HIGH_ERROR_RATIO,
            f"{e.rate(OPERATION_DURATION.count, *ERRORS)}\n  /\n{calls}\n  > {cfg.error_ratio:g}\n"
            f"and {on}\n{calls} > {cfg.error_min_rate:g}",
            cfg.error_for,
            cfg.error_severity,
            f"High error ratio on {_t(L.POOL)} ({_t(L.INSTANCE)})",
            f"{{{{ $value | humanizePercentage }}}} of the calls of client {_WHERE} failed after retries over the last "
            f"{cfg.rate_window} (threshold {cfg.error_ratio:.0%}, cancellations excluded).",
        ),
        Rule(
            HIGH_LATENCY,
            latency,
            cfg.latency_for,
            cfg.latency_severity,
            f"High p99 latency on {_t(L.POOL)} ({_t(L.INSTANCE)})",
            f"The p99 duration of one call of client {_WHERE}, retries included, is "
            f"{{{{ $value | humanizeDuration }}}} over the last {cfg.rate_window} (thresholds: {limits}).",
        ),
    ]


def _pool_rules(e: _Exprs) -> list[Rule]:
    cfg = e.cfg
    used = e.by("sum", e.s(CONNECTION_COUNT, q.eq(L.CONNECTION_STATE, names.STATE_USED)))
    waiting = e.by("sum", f"max_over_time({e.s(CONNECTION_PENDING)}[{cfg.rate_window}])")
    return [
        Rule(
            POOL_SATURATED,
            f"{used}\n  /\n{e.by('sum', e.s(CONNECTION_MAX))}\n  >= {cfg.pool_saturation:g}\n"
            f"and {q.on(BY)}\n{waiting} > 0",
            cfg.pool_saturation_for,
            cfg.pool_saturation_severity,
            f"Connection pool of {_t(L.POOL)} is saturated on {_t(L.INSTANCE)}",
            f"{{{{ $value | humanizePercentage }}}} of the connections of client {_WHERE} are in use and callers are "
            f"waiting for one.",
        ),
        Rule(
            ACQUIRE_TIMEOUTS,
            e.occurred(CONNECTION_TIMEOUTS, cfg.acquire_timeout_window),
            cfg.acquire_timeout_for,
            cfg.acquire_timeout_severity,
            f"Connection acquire timeouts on {_t(L.POOL)} ({_t(L.INSTANCE)})",
            f"Callers of client {_WHERE} gave up waiting for a pooled connection within the last "
            f"{cfg.acquire_timeout_window}: the pool is exhausted.",
        ),
        Rule(
            MESSAGES_DEAD_LETTERED,
            e.occurred(DEAD_LETTERED, cfg.dead_letter_window),
            cfg.dead_letter_for,
            cfg.dead_letter_severity,
            f"Messages dead-lettered by {_t(L.POOL)} ({_t(L.INSTANCE)})",
            f"Client {_WHERE} moved stream messages to a dead-letter stream within the last {cfg.dead_letter_window}.",
        ),
    ]


def _stream_rules(e: _Exprs) -> list[Rule]:
    cfg = e.cfg
    age = e.s(STREAM_OLDEST_PENDING_AGE)
    lag = e.s(STREAM_GROUP_LAG)
    consumed = e.s(MESSAGES_CONSUMED)
    sent = e.s(MESSAGES_SENT, q.eq(L.ERROR, ""))  # failed appends are counted too, with their error type
    window = cfg.stream_lag_window
    # A consumer's first entries create its counter series with their count: increase() cannot see that step, so a
    # series younger than the window counts as having received entries (a consumer that just started is reading).
    received = f"{q.agg('sum', STREAM_JOIN, q.increase(consumed, window))} > 0\n  or\n  " + q.agg(
        "count", STREAM_JOIN, f"{consumed} unless {consumed} offset {window}"
    )
    return [
        Rule(
            STREAM_PENDING_STUCK,
            f"{q.agg('max', BY_STREAM, age)} > {cfg.stream_pending_age_seconds:g}\nand {q.on(BY_STREAM)}\n"
            f"{q.agg('max', BY_STREAM, f'deriv({age}[{cfg.stream_pending_window}])')} > 0.5",
            cfg.stream_pending_for,
            cfg.stream_pending_severity,
            f"Stream entries stuck pending in group {_t(L.GROUP)} of {_t(L.STREAM)}",
            f"The oldest entry pending in {_GROUP} was appended "
            f"{{{{ $value | humanizeDuration }}}} ago and keeps getting older (more than "
            f"{cfg.stream_pending_age_seconds:g}s, over {cfg.stream_pending_window}): a consumer holds entries it "
            f"does not acknowledge.",
        ),
        Rule(
            STREAM_LAG_GROWING,
            f"(\n  {q.agg('max', BY_STREAM, f'delta({lag}[{window}])')} > 0\n  or\n"
            f"  {q.agg('max', BY_STREAM, e.s(STREAM_GROUP_PENDING))}\n    unless {q.on(BY_STREAM)}\n"
            f"  {q.agg('max', BY_STREAM, lag)}\n)\n"
            f"and {q.on([L.STREAM])}\n"
            f"{q.agg('sum', [L.STREAM], q.increase(sent, window))} > 0\n"
            f"unless {q.on(STREAM_JOIN)}\n(\n  {received}\n)",
            cfg.stream_lag_for,
            cfg.stream_lag_severity,
            f"Consumer group {_t(L.GROUP)} of {_t(L.STREAM)} stopped reading",
            f"The lag of {_GROUP} grew over the last {window}, or is unknown "
            f"(entries trimmed before the group read them), while producers appended to the stream, and no consumer "
            f"of the group received any entry.",
        ),
    ]


def rules(cfg: config.AlertConfig = config.PRODUCTION) -> list[Rule]:
    """All alerting rules under ``cfg``."""
    e = _Exprs(cfg)
    return [*_breaker_rules(e), *_traffic_rules(e), *_pool_rules(e), *_stream_rules(e)]


def rule_file(cfg: config.AlertConfig = config.PRODUCTION) -> dict[str, Any]:
    """The content of a Prometheus rule file."""
    rendered = [r.to_dict(cfg.runbook_base_url) for r in rules(cfg)]
    return {"groups": [{"name": config.RULE_GROUP, "rules": rendered}]}

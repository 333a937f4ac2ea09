"""The overview dashboard: one repeated row per client (``$client`` = connection pool name)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from dashboards import config, rules, statements, streams
from dashboards import promql as q
from dashboards.layout import Layout, legend
from dashboards.metrics import (
    BREAKER_REJECTIONS,
    BREAKER_STATE,
    BREAKER_TRANSITIONS,
    CONNECTION_COUNT,
    CONNECTION_CREATE_TIME,
    CONNECTION_MAX,
    CONNECTION_PENDING,
    CONNECTION_TIMEOUTS,
    CONNECTION_USE_TIME,
    CONNECTION_WAIT_TIME,
    DEAD_LETTERED,
    OPERATION_DURATION,
    RETRIES,
    L,
    names,
)
from dashboards.panels import THIRD, Query, Step, state_timeline, time_series
from dashboards.queries import (
    BREAKER_STATE_VALUES,
    ERRORS,
    RATE,
    client_variable,
    dashboard_matchers,
    job_variable,
)

TITLE = "trading-shared / Clients"


def _s(metric: str, *extra: str) -> str:
    return q.sel(metric, (*dashboard_matchers(client=True), *extra))


def _breaker_row(layout: Layout) -> None:
    open_ = _s(BREAKER_STATE, q.eq(L.BREAKER_STATE, names.BREAKER_OPEN))
    half_open = _s(BREAKER_STATE, q.eq(L.BREAKER_STATE, names.BREAKER_HALF_OPEN))
    layout.panel(
        state_timeline(
            "Circuit breaker state",
            "State of each process's breaker for this client: closed (calls flow), half-open (one trial call "
            "allowed), open (calls fail fast without I/O). A breaker that opens and closes between two scrapes "
            "does not show here: see the transitions panel.",
            [
                Query(
                    q.agg("max", [L.INSTANCE], f"2 * {open_} + ignoring ({L.BREAKER_STATE}) {half_open}"),
                    legend(L.INSTANCE),
                )
            ],
            BREAKER_STATE_VALUES,
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Circuit breaker transitions",
            "Breaker state changes per interval, by the state entered. Catches opens shorter than a scrape "
            f"interval, which the state panel cannot show. Alerts: {rules.BREAKER_OPEN}, {rules.BREAKER_FLAPPING}.",
            "short",
            [
                Query(
                    q.agg("sum", [L.BREAKER_STATE], q.increase(_s(BREAKER_TRANSITIONS), RATE)),
                    f"→ {legend(L.BREAKER_STATE)}",
                )
            ],
            width=THIRD,
            bars=True,
        )
    )
    layout.panel(
        time_series(
            "Breaker rejections/s",
            "Calls rejected by an open breaker without any I/O, by operation. Each one also counts as an error "
            "with error type circuit_open.",
            "cps",
            [Query(q.agg("sum", [L.OPERATION], q.rate(_s(BREAKER_REJECTIONS), RATE)), legend(L.OPERATION))],
            width=THIRD,
        )
    )


def _traffic_row(layout: Layout, alerts: config.AlertConfig) -> None:
    calls = q.agg("sum", [], q.rate(_s(OPERATION_DURATION.count), RATE))
    failed = q.agg("sum", [], q.rate(_s(OPERATION_DURATION.count, *ERRORS), RATE))
    layout.panel(
        time_series(
            "Operations/s",
            "Logical calls per second by operation, successful or not; retries of one call count once.",
            "ops",
            [Query(q.agg("sum", [L.OPERATION], q.rate(_s(OPERATION_DURATION.count), RATE)), legend(L.OPERATION))],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Error ratio",
            "Share of logical calls that failed after retries (cancellations excluded). The dashed line is the "
            f"{rules.HIGH_ERROR_RATIO} threshold.",
            "percentunit",
            [Query(q.ratio_or_zero(failed, calls), "error ratio")],
            width=THIRD,
            thresholds=[Step(None, "green"), Step(alerts.error_ratio, "red")],
        )
    )
    layout.panel(
        time_series(
            "Errors/s by error type",
            "Failed logical calls per second by error type: exception class, SQLSTATE, circuit_open, "
            "deadline_exceeded (cancellations excluded).",
            "cps",
            [Query(q.agg("sum", [L.ERROR], q.rate(_s(OPERATION_DURATION.count, *ERRORS), RATE)), legend(L.ERROR))],
            width=THIRD,
        )
    )


def _latency_row(layout: Layout) -> None:
    layout.panel(
        time_series(
            "Latency by operation",
            "p50 / p95 / p99 of one logical call by operation, retries and backoff included. "
            f"Alert: {rules.HIGH_LATENCY}.",
            "s",
            [
                Query(
                    q.quantile(p, _s(OPERATION_DURATION.bucket), [L.OPERATION], RATE),
                    f"p{p * 100:g} {legend(L.OPERATION)}",
                )
                for p in config.LATENCY_QUANTILES
            ],
        )
    )
    layout.panel(
        time_series(
            "Retries/s by error type",
            "Retry attempts per second by the error that caused them. Many retries per call means a struggling "
            f"server or network. Alert: {rules.RETRY_STORM}.",
            "cps",
            [Query(q.agg("sum", [L.ERROR], q.rate(_s(RETRIES), RATE)), legend(L.ERROR))],
        )
    )


def _pool_rows(layout: Layout) -> None:
    layout.panel(
        time_series(
            "Pool connections",
            "Connections in use and idle, and the pool's maximum, summed over the selected processes. Used close "
            f"to max with requests pending means the pool is saturated. Alert: {rules.POOL_SATURATED}.",
            "short",
            [
                Query(q.agg("sum", [L.CONNECTION_STATE], _s(CONNECTION_COUNT)), legend(L.CONNECTION_STATE)),
                Query(q.agg("sum", [], _s(CONNECTION_MAX)), "max"),
            ],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Pending connection requests",
            "Callers waiting for a pooled connection, per process.",
            "short",
            [Query(q.agg("sum", [L.INSTANCE], _s(CONNECTION_PENDING)), legend(L.INSTANCE))],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Connection acquire wait p99",
            "p99 time a caller waited to get a connection from the pool, per process.",
            "s",
            [Query(q.quantile(0.99, _s(CONNECTION_WAIT_TIME.bucket), [L.INSTANCE], RATE), legend(L.INSTANCE))],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Connection acquire timeouts/s",
            f"Callers that gave up waiting for a pooled connection (pool exhausted), per process. Alert: "
            f"{rules.ACQUIRE_TIMEOUTS}.",
            "cps",
            [Query(q.agg("sum", [L.INSTANCE], q.rate(_s(CONNECTION_TIMEOUTS), RATE)), legend(L.INSTANCE))],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Connection use and create time p99",
            "p99 time a connection is held per checkout (use) and p99 time to open a new connection (create).",
            "s",
            [
                Query(q.quantile(0.99, _s(CONNECTION_USE_TIME.bucket), [], RATE), "use p99"),
                Query(q.quantile(0.99, _s(CONNECTION_CREATE_TIME.bucket), [], RATE), "create p99"),
            ],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Dead-lettered messages",
            f"Stream messages moved to a dead-letter stream per interval, per process. Alert: "
            f"{rules.MESSAGES_DEAD_LETTERED}.",
            "short",
            [Query(q.agg("sum", [L.INSTANCE], q.increase(_s(DEAD_LETTERED), RATE)), legend(L.INSTANCE))],
            width=THIRD,
            bars=True,
        )
    )


def build(alerts: config.AlertConfig = config.PRODUCTION) -> dashboard_builders.Dashboard:
    """Build the overview dashboard."""
    layout = Layout(
        TITLE,
        config.OVERVIEW_UID,
        "Per client: circuit breaker, traffic, errors, latency, retries, connection pool and dead letters; then "
        "the selected clients' PostgreSQL statements and stream consumer groups.",
        variables=[job_variable(), client_variable()],
    )
    layout.row(f"${config.CLIENT_VARIABLE}", repeat=config.CLIENT_VARIABLE)
    _breaker_row(layout)
    _traffic_row(layout, alerts)
    _latency_row(layout)
    _pool_rows(layout)
    statements.add(layout)
    streams.add(layout, alerts)
    return layout.dashboard

"""The per-system dashboard: PostgreSQL and Redis side by side, one repeated row per ``$system``, a line per client."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from dashboards import config
from dashboards import promql as q
from dashboards.layout import Layout, legend
from dashboards.metrics import (
    BREAKER_STATE,
    CONNECTION_COUNT,
    CONNECTION_MAX,
    OPERATION_DURATION,
    RETRIES,
    L,
    names,
)
from dashboards.panels import THIRD, Query, Step, time_series
from dashboards.queries import ERRORS, RATE, dashboard_matchers, job_variable, system_variable

TITLE = "trading-shared / Systems"
_CLIENT = (L.POOL,)


def _s(metric: str, *extra: str) -> str:
    return q.sel(metric, (*dashboard_matchers(system=True), *extra))


def _panels(layout: Layout, alerts: config.AlertConfig) -> None:
    calls = q.agg("sum", _CLIENT, q.rate(_s(OPERATION_DURATION.count), RATE))
    failed = q.agg("sum", _CLIENT, q.rate(_s(OPERATION_DURATION.count, *ERRORS), RATE))
    not_closed = q.one_of(L.BREAKER_STATE, (names.BREAKER_OPEN, names.BREAKER_HALF_OPEN))
    used = q.agg("sum", _CLIENT, _s(CONNECTION_COUNT, q.eq(L.CONNECTION_STATE, names.STATE_USED)))
    panels = [
        time_series(
            "Operations/s by client",
            "Logical calls per second of each client of this database system.",
            "ops",
            [Query(calls, legend(L.POOL))],
            width=THIRD,
        ),
        time_series(
            "Error ratio by client",
            "Share of each client's calls that failed after retries (cancellations excluded). Dashed line: the "
            "error-ratio alert threshold.",
            "percentunit",
            [Query(q.ratio_or_zero(failed, calls), legend(L.POOL))],
            width=THIRD,
            thresholds=[Step(None, "green"), Step(alerts.error_ratio, "red")],
        ),
        time_series(
            "Latency p99 by client",
            "p99 duration of one logical call, retries included, per client.",
            "s",
            [Query(q.quantile(0.99, _s(OPERATION_DURATION.bucket), _CLIENT, RATE), legend(L.POOL))],
            width=THIRD,
        ),
        time_series(
            "Retries/s by client",
            "Retry attempts per second of each client, all error types.",
            "cps",
            [Query(q.agg("sum", _CLIENT, q.rate(_s(RETRIES), RATE)), legend(L.POOL))],
            width=THIRD,
        ),
        time_series(
            "Breakers not closed by client",
            "Number of processes whose breaker for the client is open or half-open right now.",
            "short",
            [Query(q.agg("sum", _CLIENT, _s(BREAKER_STATE, not_closed)), legend(L.POOL))],
            width=THIRD,
        ),
        time_series(
            "Pool utilisation by client",
            "Connections in use over the pool maximum, summed over processes. Dashed line: the saturation alert "
            "threshold.",
            "percentunit",
            [Query(f"{used} / {q.agg('sum', _CLIENT, _s(CONNECTION_MAX))}", legend(L.POOL))],
            width=THIRD,
            thresholds=[Step(None, "green"), Step(alerts.pool_saturation, "red")],
        ),
    ]
    for panel in panels:
        layout.panel(panel)


def build(alerts: config.AlertConfig = config.PRODUCTION) -> dashboard_builders.Dashboard:
    """Build the per-system dashboard."""
    layout = Layout(
        TITLE,
        config.SYSTEMS_UID,
        "PostgreSQL and Redis compared: traffic, errors, latency, retries, breakers and pool use per client.",
        variables=[job_variable(), system_variable()],
    )
    layout.row(f"${config.SYSTEM_VARIABLE}", repeat=config.SYSTEM_VARIABLE)
    _panels(layout, alerts)
    return layout.dashboard

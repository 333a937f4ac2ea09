"""The statement row of the overview: PostgreSQL calls by ``db.query.summary`` (``SELECT instruments``...).

Not repeated per client: one row for the selected clients, a line per client and statement. Each panel keeps its
``topk`` (:data:`dashboards.config.STATEMENT_TOPK`), and the SDK caps the distinct summaries of a client (past the
cap: ``_OTHER``), so neither the panels nor the series behind them grow with the number of distinct statements.
"""

from __future__ import annotations

from dashboards import config
from dashboards import promql as q
from dashboards.layout import Layout, legend
from dashboards.metrics import OPERATION_DURATION, QUERY_SUMMARY_OVERFLOW, L, names
from dashboards.panels import HALF, Query, time_series
from dashboards.queries import ERRORS, RATE, dashboard_matchers

TITLE = "PostgreSQL statements"
_BY = (L.POOL, L.QUERY_SUMMARY)
_LEGEND = f"{legend(L.POOL)}: {legend(L.QUERY_SUMMARY)}"


def _s(metric: str, *extra: str) -> str:
    return q.sel(metric, (*dashboard_matchers(client=True), q.eq(L.SYSTEM, names.SYSTEM_POSTGRESQL), *extra))


def _top(expr: str) -> str:
    # topk ranks NaN (a statement without calls in the interval) below every number: it only fills empty places.
    return f"topk({config.STATEMENT_TOPK}, {expr})"


def add(layout: Layout) -> None:
    """Add the statement row and its panels."""
    layout.row(TITLE)
    top = config.STATEMENT_TOPK
    p99 = q.quantile(0.99, _s(OPERATION_DURATION.bucket, q.ne(L.QUERY_SUMMARY, "")), _BY, RATE)
    time_by = q.agg("sum", _BY, q.rate(_s(OPERATION_DURATION.sum, q.ne(L.QUERY_SUMMARY, "")), RATE))
    time_all = q.agg("sum", [L.POOL], q.rate(_s(OPERATION_DURATION.sum), RATE))
    errors = q.agg("sum", (*_BY, L.ERROR), q.rate(_s(OPERATION_DURATION.count, *ERRORS), RATE))
    layout.panel(
        time_series(
            f"Slowest statements (p99, top {top})",
            f"The {top} statements with the highest p99 duration of one call (retries included), by statement "
            "summary (operation and tables, no values). A statement with few calls in the interval shows its "
            "slowest call. `_OTHER`: statements past the client's cap of distinct summaries.",
            "s",
            [Query(_top(p99), _LEGEND)],
            width=HALF,
        )
    )
    layout.panel(
        time_series(
            f"Time share by statement (top {top})",
            f"Share of each client's time in PostgreSQL calls spent in each statement, for the {top} biggest: "
            "where tuning a statement pays off most (a fast statement called often can top a slow rare one).",
            "percentunit",
            [Query(_top(f"{time_by}\n  / {q.on([L.POOL])} group_left\n{time_all}"), _LEGEND)],
            width=HALF,
        )
    )
    layout.panel(
        time_series(
            f"Errors/s by statement (top {top})",
            "Failed calls per second by statement and error type (SQLSTATE, exception class, circuit_open...; "
            "cancellations excluded), for the statements with the most errors.",
            "cps",
            [Query(_top(errors), f"{_LEGEND} ({legend(L.ERROR)})")],
            width=HALF,
        )
    )
    layout.panel(
        time_series(
            "Statements past the summary cap",
            "Calls recorded as `_OTHER` per interval: the client has seen more distinct statements than its cap "
            "(PostgresSettings.query_summary_cap). A steady flow means SQL built with values in its text, or a cap "
            "too low for the service.",
            "short",
            [Query(q.agg("sum", [L.POOL], q.increase(_s(QUERY_SUMMARY_OVERFLOW), RATE)), legend(L.POOL))],
            width=HALF,
            bars=True,
        )
    )

"""Query pieces shared by the dashboards and the rules, and the dashboards' template variables."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_builders

from dashboards import config
from dashboards import promql as q
from dashboards.metrics import BREAKER_STATE, L, names
from dashboards.panels import custom_variable, query_variable

#: Every rate and increase in a dashboard uses Grafana's rate interval (at least four scrape intervals).
RATE = "$__rate_interval"

#: Matchers of failed calls, cancellations excluded (a cancelled call is neither a success nor a failure).
ERRORS = (q.ne(L.ERROR, ""), q.ne(L.ERROR, names.ERROR_CANCELLED))

#: State timeline encoding of the breaker: value -> (text, colour).
BREAKER_STATE_VALUES = {
    0: (names.BREAKER_CLOSED, "green"),
    1: (names.BREAKER_HALF_OPEN, "yellow"),
    2: (names.BREAKER_OPEN, "red"),
}


def _var(name: str) -> str:
    return f"${name}"


def dashboard_matchers(*, client: bool = False, system: bool = False) -> tuple[str, ...]:
    """Matchers for the dashboard's variables: always ``$job``, optionally ``$client`` and ``$system``."""
    matchers = [q.regex(L.JOB, _var(config.JOB_VARIABLE))]
    if client:
        matchers.append(q.regex(L.POOL, _var(config.CLIENT_VARIABLE)))
    if system:
        matchers.append(q.regex(L.SYSTEM, _var(config.SYSTEM_VARIABLE)))
    return tuple(matchers)


# Every client reports its breaker state all the time (1 for the current state, 0 for the others), even when idle:
# the variables list clients from it.
def job_variable() -> dashboard_builders.QueryVariable:
    """``$job``: Prometheus jobs that run a trading-shared client."""
    return query_variable(
        config.JOB_VARIABLE,
        "Job",
        f"label_values({BREAKER_STATE}, {L.JOB})",
        description="Prometheus scrape job(s) of the services to show.",
    )


def client_variable() -> dashboard_builders.QueryVariable:
    """``$client``: connection pool names (one per SDK client) within the selected jobs."""
    return query_variable(
        config.CLIENT_VARIABLE,
        "Client",
        f"label_values({q.sel(BREAKER_STATE, dashboard_matchers())}, {L.POOL})",
        description="SDK client(s), by connection pool name; one row per selected client.",
    )


def system_variable() -> dashboard_builders.CustomVariable:
    """``$system``: database systems (PostgreSQL, Redis)."""
    return custom_variable(
        config.SYSTEM_VARIABLE,
        "System",
        (names.SYSTEM_POSTGRESQL, names.SYSTEM_REDIS),
        description="Database system(s); one row per selected system.",
    )

"""Every knob of the dashboards and alerts, in one place.

Change a value here, run ``python dashboards/generate.py``, commit the regenerated files. Metric and label names are
NOT configured here: they come from ``trading_shared.telemetry.names`` (see :mod:`dashboards.metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from dashboards.metrics import names

# --- where the runbook lives ---------------------------------------------------------------------------------------
#: Alerts link to ``<RUNBOOK_BASE_URL>#<alert name in lower case>``. The default is the runbook's path in this
#: repository; to get clickable links, generate with ``python dashboards/generate.py --runbook-url <URL>`` where
#: ``<URL>`` is where your copy of dashboards/runbook.md is browsable (``AlertConfig.runbook_base_url``).
RUNBOOK_BASE_URL: Final = "dashboards/runbook.md"

# --- dashboards ------------------------------------------------------------------------------------------------------
DASHBOARD_TAGS: Final = ("trading-shared",)
#: Stable dashboard uids (Grafana allows at most 40 characters): links and provisioning rely on them.
OVERVIEW_UID: Final = "trading-shared-overview"
SYSTEMS_UID: Final = "trading-shared-systems"
DASHBOARD_REFRESH: Final = "30s"
DASHBOARD_TIME_FROM: Final = "now-1h"

#: Template variable names (used as ``$datasource``, ``$job``, ``$client``, ``$system``).
DATASOURCE_VARIABLE: Final = "datasource"
JOB_VARIABLE: Final = "job"
CLIENT_VARIABLE: Final = "client"
SYSTEM_VARIABLE: Final = "system"

#: Latency quantiles drawn on the latency panels.
LATENCY_QUANTILES: Final = (0.5, 0.95, 0.99)
#: Statements shown by each statement panel (``topk``). The SDK caps the distinct ``db.query.summary`` values of a
#: client (``PostgresSettings.query_summary_cap``, then ``_OTHER``), so the series behind the panels are bounded too.
STATEMENT_TOPK: Final = 10
#: Quantiles drawn on the stream processing-age panel.
MESSAGE_AGE_QUANTILES: Final = (0.5, 0.99)

# --- Grafana-managed alerts ----------------------------------------------------------------------------------------
#: Grafana expands ``${VAR}`` from its environment in this field when provisioning: set PROMETHEUS_DATASOURCE_UID.
GRAFANA_DATASOURCE_UID: Final = "${PROMETHEUS_DATASOURCE_UID}"
GRAFANA_FOLDER: Final = "trading-shared"
GRAFANA_ORG_ID: Final = 1
GRAFANA_EVALUATION_INTERVAL: Final = "1m"
#: How far back Grafana's instant query may look (seconds); covers the longest range in any rule.
GRAFANA_QUERY_RANGE_SECONDS: Final = 900

# --- Prometheus alert rules ----------------------------------------------------------------------------------------
RULE_GROUP: Final = "trading-shared"


@dataclass(frozen=True)
class AlertConfig:
    """Selectors, windows and thresholds of the alert rules.

    Durations are Prometheus duration strings. ``breaker_open_window`` is how long the transitions counter keeps a
    breaker-open alert active after an open too short for any scrape to see: it must exceed ``breaker_open_for`` plus
    two scrape intervals plus one evaluation interval, or a short open can slip through. ``breaker_open_for`` is the
    pending period of the breaker-open alert: short, because the breaker already debounces (it opens after
    ``fail_max`` failed calls) and the expression stays true for the whole window after any open, so the pending
    period only delays the page (see docs/alerting.md, "Prometheus alert rules").

    The breaker-open alert inhibits the symptoms of the same outage in Alertmanager (``alertmanager.py``), so it must
    outlast them after recovery: ``breaker_open_window`` must exceed the windows the symptoms look back over
    (``rate_window``, ``acquire_timeout_window``) plus the breaker's reset timeout (10 s by default: the last open can
    come that long before the breaker closes) plus a scrape and an evaluation interval. With the 5-minute rate window
    and 1-minute intervals that is more than 7m10s, hence 8m: with an equal window an error-ratio or latency alert
    still firing when the breaker-open alert resolves is no longer inhibited, and pages a second time.
    """

    #: PromQL matchers every rule selects with; narrow them to scope the rules to some services,
    #: e.g. ``('job=~"orders|risk"',)``. Aggregations always keep job + instance, so services never collide.
    job_matchers: tuple[str, ...] = ('job!=""',)
    #: Where the runbook is: every alert's ``runbook_url`` is ``<runbook_base_url>#<alert name in lower case>``.
    runbook_base_url: str = RUNBOOK_BASE_URL
    rate_window: str = "5m"

    breaker_open_window: str = "8m"
    breaker_open_for: str = "10s"
    breaker_open_severity: str = "critical"

    flapping_window: str = "15m"
    flapping_min_opens: int = 3
    flapping_for: str = "0s"
    flapping_severity: str = "warning"

    #: Retries per logical call, and a floor in retries/s so a trickle of traffic cannot page.
    retry_ratio: float = 0.5
    retry_min_rate: float = 1.0
    retry_for: str = "10m"
    retry_severity: str = "warning"

    #: Failed calls (cancellations excluded) over all calls, and a floor in calls/s.
    error_ratio: float = 0.05
    error_min_rate: float = 0.1
    error_for: str = "5m"
    error_severity: str = "critical"

    #: Used connections over the pool's maximum, while requests are waiting for a connection.
    pool_saturation: float = 0.9
    pool_saturation_for: str = "10m"
    pool_saturation_severity: str = "warning"

    acquire_timeout_window: str = "5m"
    acquire_timeout_for: str = "0s"
    acquire_timeout_severity: str = "warning"

    #: p99 of one logical call (retries included), per database system, in seconds.
    latency_p99_seconds: dict[str, float] = field(
        default_factory=lambda: {names.SYSTEM_POSTGRESQL: 0.5, names.SYSTEM_REDIS: 0.05}
    )
    latency_for: str = "10m"
    latency_severity: str = "warning"

    dead_letter_window: str = "15m"
    dead_letter_for: str = "0s"
    dead_letter_severity: str = "warning"

    #: A consumer group's oldest pending entry (delivered, not acknowledged) older than this many seconds, and
    #: getting older at more than half a second per second over ``stream_pending_window`` (the same entry stays
    #: oldest: nothing acknowledges it; a group catching up on old entries gets younger, not older).
    stream_pending_age_seconds: float = 60.0
    stream_pending_window: str = "2m"
    stream_pending_for: str = "2m"
    stream_pending_severity: str = "critical"

    #: A consumer group whose lag grew over ``stream_lag_window`` while producers appended to the stream and no
    #: process received any entry for the group in that window.
    stream_lag_window: str = "2m"
    stream_lag_for: str = "3m"
    stream_lag_severity: str = "critical"


#: The committed rule file.
PRODUCTION: Final = AlertConfig()

#: For end-to-end tests against a Prometheus that scrapes and evaluates every second: same rules, short windows, so
#: an alert resolves seconds (not minutes) after recovery. Never deployed.
FAST_TEST: Final = AlertConfig(
    rate_window="10s",
    breaker_open_window="7s",
    breaker_open_for="2s",
    flapping_window="30s",
    retry_for="5s",
    error_for="5s",
    pool_saturation_for="5s",
    acquire_timeout_window="5s",
    latency_for="5s",
    dead_letter_window="5s",
    stream_pending_age_seconds=2.0,
    stream_pending_window="4s",
    stream_pending_for="2s",
    stream_lag_window="4s",
    stream_lag_for="2s",
)


# --- Alertmanager routing ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeverityRoute:
    """Where the alerts of one severity go, and how often (Alertmanager duration strings).

    ``group_wait`` is how long a new group (one alert of one client in one process) waits before its first notification;
    ``group_interval`` how long before a notification about alerts that joined or resolved since; ``repeat_interval``
    how long before a still-firing group is notified again.
    """

    severity: str
    receiver: str
    group_wait: str
    group_interval: str
    repeat_interval: str


@dataclass(frozen=True)
class RoutingConfig:
    """The generated Alertmanager configuration (``dashboards/alertmanager/trading-shared.alertmanager.yml``).

    Critical alerts page quickly (a trading client that cannot reach its database loses money by the minute).
    Warnings wait 3 minutes before their first notification, so that a warning raised by the same outage as a
    breaker-open alert (the acquire-timeouts alert has no ``for``) is held until that alert fires and inhibits it:
    for every inhibited alert, its ``for`` plus its route's ``group_wait`` must exceed ``breaker_open_for`` plus two
    evaluation intervals (with 1-minute evaluations: 0 + 3m > 10s + 2m; tested). ``webhook_url`` is a placeholder
    (``{receiver}`` is replaced by the receiver's name): a team replaces the receivers with its own (see
    docs/alerting.md).
    """

    routes: tuple[SeverityRoute, ...] = (
        SeverityRoute("critical", "trading-shared-page", group_wait="10s", group_interval="2m", repeat_interval="1h"),
        SeverityRoute("warning", "trading-shared-ticket", group_wait="3m", group_interval="5m", repeat_interval="4h"),
    )
    #: The receiver of an alert whose severity no route names (and of the root route of the standalone file).
    default_receiver: str = "trading-shared-ticket"
    webhook_url: str = "http://alert-receiver.invalid/{receiver}"
    send_resolved: bool = True


#: The committed Alertmanager configuration.
ROUTING: Final = RoutingConfig()

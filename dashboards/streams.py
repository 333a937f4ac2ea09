"""The stream row of the overview: consumer groups' lag, pending entries and their age, produced and consumed rates.

Not repeated per client, and not filtered by ``$client``: a stream's producers, consumers and the client observing
its groups are usually different clients in different processes, and the group figures describe the group on the
server, not a client (they carry no client label). So the row shows every stream of the selected jobs, a line per
stream and consumer group; ``max`` keeps one line when several processes observe the same group.
"""

from __future__ import annotations

from dashboards import config, rules
from dashboards import promql as q
from dashboards.layout import Layout, legend
from dashboards.metrics import (
    MESSAGES_CONSUMED,
    MESSAGES_SENT,
    STREAM_GROUP_LAG,
    STREAM_GROUP_PENDING,
    STREAM_MESSAGE_AGE,
    STREAM_OLDEST_PENDING_AGE,
    L,
)
from dashboards.panels import HALF, THIRD, Query, Step, time_series
from dashboards.queries import RATE, dashboard_matchers

TITLE = "Streams"
_GROUP = (L.STREAM, L.GROUP)
_LEGEND = f"{legend(L.STREAM)} / {legend(L.GROUP)}"


def _s(metric: str, *extra: str) -> str:
    return q.sel(metric, (*dashboard_matchers(), *extra))


def add(layout: Layout, alerts: config.AlertConfig) -> None:
    """Add the stream row and its panels."""
    layout.row(TITLE)
    sent = _s(MESSAGES_SENT, q.eq(L.ERROR, ""))  # failed appends are counted too, with their error type
    layout.panel(
        time_series(
            "Consumer-group lag",
            "Entries of each stream not yet delivered to the consumer group (XINFO GROUPS lag), per stream and "
            "group. Growing while producers write and nothing is consumed: the group stopped reading (alert "
            f"{rules.STREAM_LAG_GROWING}). No line while the server does not know the lag (entries trimmed or "
            "deleted before the group read them). Only the groups a client observes (RedisSettings.telemetry_streams "
            "`stream=group`).",
            "short",
            [Query(q.agg("max", _GROUP, _s(STREAM_GROUP_LAG)), _LEGEND)],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Pending entries",
            "Entries delivered to the consumer group and not acknowledged yet, per stream and group: being "
            "processed, or held by a consumer that stopped or died.",
            "short",
            [Query(q.agg("max", _GROUP, _s(STREAM_GROUP_PENDING)), _LEGEND)],
            width=THIRD,
        )
    )
    layout.panel(
        time_series(
            "Oldest pending entry age",
            "Time since the oldest pending entry of each group was appended (0: none pending). Rising steadily: "
            f"a consumer holds entries it does not acknowledge. Dashed line: the {rules.STREAM_PENDING_STUCK} "
            "threshold (the alert also needs the age to keep rising).",
            "s",
            [Query(q.agg("max", _GROUP, _s(STREAM_OLDEST_PENDING_AGE)), _LEGEND)],
            width=THIRD,
            thresholds=[Step(None, "green"), Step(alerts.stream_pending_age_seconds, "red")],
        )
    )
    layout.panel(
        time_series(
            "Processing age (append to acknowledgement)",
            "p50 / p99 of the time from an entry's append to its acknowledgement, per stream and group: how late "
            "consumers finish entries. High while the lag falls: a group catching up on a backlog.",
            "s",
            [
                Query(
                    q.quantile(p, _s(STREAM_MESSAGE_AGE.bucket), _GROUP, RATE),
                    f"p{p * 100:g} {_LEGEND}",
                )
                for p in config.MESSAGE_AGE_QUANTILES
            ],
            width=HALF,
        )
    )
    layout.panel(
        time_series(
            "Produced vs consumed/s",
            "Entries appended per second to each stream (all producers; failed appends left out) and entries "
            "received per second by each consumer group (all consumers; reads and claims). Consumed below produced "
            "for long: the group falls behind.",
            "cps",
            [
                Query(q.agg("sum", [L.STREAM], q.rate(sent, RATE)), f"produced {legend(L.STREAM)}"),
                Query(q.agg("sum", _GROUP, q.rate(_s(MESSAGES_CONSUMED), RATE)), f"consumed {_LEGEND}"),
            ],
            width=HALF,
        )
    )

"""The Alertmanager configuration shipped with the rules: routes by severity, grouping per client, inhibition.

Built from the same rules as ``dashboards/alerts/trading-shared.rules.yml`` (rendered to
``dashboards/alertmanager/trading-shared.alertmanager.yml``), so a new alert is routed, and must be classified as
inhibited by the breaker-open alert or not, before the files can be generated at all.

* One route for every alert of the rules, grouped by ``alertname``, ``job``, ``instance`` and the client (pool
  name): the alert of one client in one process is one group. Not the client alone: Prometheus re-sends a resolved
  alert for 15 minutes, and a symptom that resolved while inhibited would then be listed in its client's resolved
  breaker-open notification; in a group of its own that never notified, a resolved alert is never notified either.
  Child routes pick the receiver and the timing by ``severity`` (:class:`dashboards.config.RoutingConfig`).
* While a client's breaker-open alert fires, the symptoms of the same outage in the same client of the same process
  (:data:`INHIBITED_BY_BREAKER_OPEN`) are inhibited: one page per outage, not one per symptom.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from dashboards import config, rules
from dashboards.rules import (
    ACQUIRE_TIMEOUTS,
    BREAKER_FLAPPING,
    BREAKER_OPEN,
    HIGH_ERROR_RATIO,
    HIGH_LATENCY,
    MESSAGES_DEAD_LETTERED,
    POOL_SATURATED,
    RETRY_STORM,
    STREAM_LAG_GROWING,
    STREAM_PENDING_STUCK,
)

#: What a client's breaker-open alert inhibits (same job, instance and client): failed, slow and retried calls and
#: callers waiting for connections are what an unreachable database looks like from the client.
INHIBITED_BY_BREAKER_OPEN: Final = (HIGH_ERROR_RATIO, HIGH_LATENCY, RETRY_STORM, POOL_SATURATED, ACQUIRE_TIMEOUTS)

#: The alerts nothing inhibits, and why. Every alert of the rules is in exactly one of the two.
NOT_INHIBITED: Final = {
    BREAKER_OPEN: "the cause: the one notification of an outage",
    BREAKER_FLAPPING: "repeated opens and closes are a problem of their own, beyond any one open",
    MESSAGES_DEAD_LETTERED: "dead-lettered messages wait for a person whatever made them fail",
    STREAM_PENDING_STUCK: "a stream backlog outlives the outage that caused it and needs its own all-clear",
    STREAM_LAG_GROWING: "a stream backlog outlives the outage that caused it and needs its own all-clear",
}

#: The labels an inhibited alert must share with the breaker-open alert: the same client of the same process.
EQUAL: Final = rules.BY


class RoutingError(ValueError):
    """The rules and the routing configuration do not fit together (unclassified alert, unrouted severity)."""


def _matcher(label: str, op: str, value: str) -> str:
    return f'{label}{op}"{value}"'


def _one_of(names: Sequence[str]) -> str:
    return "|".join(re.escape(n) for n in names)


def _check(alerts: Sequence[rules.Rule], routing: config.RoutingConfig) -> None:
    names = [r.alert for r in alerts]
    unclassified = [n for n in names if (n in INHIBITED_BY_BREAKER_OPEN) == (n in NOT_INHIBITED)]
    if unclassified:
        raise RoutingError(
            f"alerts {unclassified}: list each in exactly one of INHIBITED_BY_BREAKER_OPEN and NOT_INHIBITED "
            "(dashboards/alertmanager.py)"
        )
    unknown = sorted((set(INHIBITED_BY_BREAKER_OPEN) | set(NOT_INHIBITED)) - set(names))
    if unknown:
        raise RoutingError(f"alertmanager.py classifies alerts the rules do not have: {unknown}")
    routed = {r.severity for r in routing.routes}
    unrouted = sorted({r.severity for r in alerts} - routed)
    if unrouted:
        raise RoutingError(f"no route for severities {unrouted} (config.RoutingConfig.routes)")


def receivers(routing: config.RoutingConfig = config.ROUTING) -> list[str]:
    """The names of the receivers the configuration defines, in order."""
    return list(dict.fromkeys([*(r.receiver for r in routing.routes), routing.default_receiver]))


def alertmanager_config(
    alerts: Sequence[rules.Rule] | None = None, routing: config.RoutingConfig = config.ROUTING
) -> dict[str, Any]:
    """A complete Alertmanager configuration for ``alerts`` (default: the production rules) under ``routing``."""
    alerts = rules.rules() if alerts is None else alerts
    _check(alerts, routing)
    names = [r.alert for r in alerts]
    by = ["alertname", *rules.BY]
    return {
        "route": {
            "receiver": routing.default_receiver,
            "group_by": by,
            "routes": [
                {
                    "matchers": [_matcher("alertname", "=~", _one_of(names))],
                    "receiver": routing.default_receiver,
                    "group_by": by,
                    "routes": [
                        {
                            "matchers": [_matcher("severity", "=", r.severity)],
                            "receiver": r.receiver,
                            "group_wait": r.group_wait,
                            "group_interval": r.group_interval,
                            "repeat_interval": r.repeat_interval,
                        }
                        for r in routing.routes
                    ],
                }
            ],
        },
        "inhibit_rules": [
            {
                "source_matchers": [_matcher("alertname", "=", BREAKER_OPEN)],
                "target_matchers": [_matcher("alertname", "=~", _one_of(INHIBITED_BY_BREAKER_OPEN))],
                "equal": list(EQUAL),
            }
        ],
        "receivers": [
            {
                "name": name,
                "webhook_configs": [
                    {"url": routing.webhook_url.format(receiver=name), "send_resolved": routing.send_resolved}
                ],
            }
            for name in receivers(routing)
        ],
    }


HEADER: Final = """\
# Alertmanager configuration for the trading-shared alerts, to merge into your own (see docs/alerting.md):
#   - the route under route.routes goes under your root route's routes (first, or before any catch-all);
#   - inhibit_rules: append to yours;
#   - receivers: replace the placeholder webhook URLs (http://alert-receiver.invalid/...) with your pager and
#     ticket/chat integrations, or rename the receivers in the route to ones you have.
# Check: amtool check-config <file>; amtool config routes test --config.file=<file> alertname=... severity=...
"""

"""Grafana-managed alert rules derived from the Prometheus rule file, for teams that keep their alerts in Grafana.

The conversion mirrors Grafana's own Prometheus-rule import: a ``query`` node runs the PromQL unchanged, a
``prometheus_math`` node turns every returned series into 1, and a ``threshold`` node fires on it. So, as in
Prometheus, any series the expression returns is an alert and no series means normal (``noDataState: OK``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from dashboards import config

QUERY, MATH, THRESHOLD = "query", "prometheus_math", "threshold"
_EXPR_DATASOURCE = {"type": "__expr__", "uid": "__expr__"}


def _uid(group: str, alert: str) -> str:
    """A stable, readable uid (Grafana allows 40 characters): ``ts-circuit-breaker-open``; hashed if too long."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "-", alert.removeprefix("TradingShared")).lower()
    uid = f"ts-{words}"
    if len(uid) > 40:
        uid = f"{uid[:29]}-{hashlib.sha256(f'{group}/{alert}'.encode()).hexdigest()[:10]}"
    return uid


def _annotation(text: str) -> str:
    # Grafana templates see the query's value as $values.<refId>.Value; $value is a description of all values there.
    return re.sub(r"\$value\b", f"$values.{QUERY}.Value", text)


def _data(expr: str) -> list[dict[str, Any]]:
    return [
        {
            "refId": QUERY,
            "queryType": "prometheus",
            "relativeTimeRange": {"from": config.GRAFANA_QUERY_RANGE_SECONDS, "to": 0},
            "datasourceUid": config.GRAFANA_DATASOURCE_UID,
            "model": {
                "editorMode": "code",
                "expr": expr,
                "instant": True,
                "range": False,
                "intervalMs": 1000,
                "maxDataPoints": 43200,
                "refId": QUERY,
            },
        },
        {
            "refId": MATH,
            "queryType": "math",
            "relativeTimeRange": {"from": 0, "to": 0},
            "datasourceUid": "__expr__",
            "model": {
                "datasource": _EXPR_DATASOURCE,
                "expression": f"is_number(${QUERY}) || is_nan(${QUERY}) || is_inf(${QUERY})",
                "type": "math",
                "refId": MATH,
            },
        },
        {
            "refId": THRESHOLD,
            "queryType": "threshold",
            "relativeTimeRange": {"from": 0, "to": 0},
            "datasourceUid": "__expr__",
            "model": {
                "datasource": _EXPR_DATASOURCE,
                "expression": MATH,
                "type": "threshold",
                "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                "refId": THRESHOLD,
            },
        },
    ]


def _rule(group: str, rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": _uid(group, rule["alert"]),
        "title": rule["alert"],
        "condition": THRESHOLD,
        "data": _data(rule["expr"]),
        "noDataState": "OK",
        "execErrState": "Error",
        "for": rule.get("for", "0s"),
        "labels": dict(rule.get("labels", {})),
        "annotations": {k: _annotation(v) for k, v in rule.get("annotations", {}).items()},
        "isPaused": False,
    }


def provisioning(rule_file: dict[str, Any]) -> dict[str, Any]:
    """Grafana alerting provisioning content (apiVersion 1) equivalent to a Prometheus rule file's alerting rules."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": config.GRAFANA_ORG_ID,
                "name": group["name"],
                "folder": config.GRAFANA_FOLDER,
                "interval": config.GRAFANA_EVALUATION_INTERVAL,
                "rules": [_rule(group["name"], r) for r in group["rules"] if "alert" in r],
            }
            for group in rule_file["groups"]
        ],
    }

"""Blocking reads wait on purpose: the latency alert must leave them out, or a healthy consumer pages someone."""

from __future__ import annotations

from pathlib import Path

import yaml

from trading_shared.telemetry import names

RULES = Path(__file__).resolve().parents[2] / "dashboards" / "alerts" / "trading-shared.rules.yml"


def test_latency_alert_excludes_every_blocking_operation() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = [r for g in groups for r in g["rules"] if r.get("alert") == "TradingSharedHighLatencyP99"]
    selectors = rule["expr"].split("db_client_operation_duration_seconds_bucket")[1:]
    assert selectors, "the latency alert no longer reads db_client_operation_duration_seconds_bucket"
    for selector in selectors:
        matchers = selector[selector.index("{") + 1 : selector.index("}")]
        assert 'db_operation_name!~"' in matchers
        excluded = matchers.split('db_operation_name!~"')[1].split('"')[0].split("|")
        assert set(excluded) == set(names.BLOCKING_OPERATIONS)

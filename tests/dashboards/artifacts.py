"""The committed dashboard and alert files, loaded for the tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from promql_tokens import FUNCTIONS, extract

from dashboards.metrics import names
from dashboards.render import GENERATED_DIR, GRAFANA_ALERTS_FILE, HERE, RULES_FILE

RUNBOOK = HERE / "runbook.md"
PROMTOOL_TESTS = sorted((HERE / "alerts" / "tests").glob("*.yml"))


def generated_dashboards() -> dict[str, dict[str, Any]]:
    """Generated dashboards by file name."""
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(GENERATED_DIR.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels") or []
        else:
            yield panel


def all_panels() -> list[tuple[str, dict[str, Any]]]:
    """``("<dashboard file>: <panel title>", panel)`` for every panel of every generated dashboard."""
    return [(f"{name}: {p.get('title')}", p) for name, d in generated_dashboards().items() for p in panels(d)]


def rule_file() -> dict[str, Any]:
    """The committed Prometheus rule file."""
    return yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of the committed rule file."""
    return [r for g in rule_file()["groups"] for r in g["rules"] if "alert" in r]


def grafana_rules() -> list[dict[str, Any]]:
    """Every rule of the committed Grafana alerting provisioning file."""
    content = yaml.safe_load(GRAFANA_ALERTS_FILE.read_text(encoding="utf-8"))
    return [r for g in content["groups"] for r in g["rules"]]


def promtool_tests() -> dict[Path, dict[str, Any]]:
    """The promtool unit-test files."""
    return {p: yaml.safe_load(p.read_text(encoding="utf-8")) for p in PROMTOOL_TESTS}


def unknown_names(expr: str) -> list[str]:
    """Metrics, labels and functions in ``expr`` that the names module (or PromQL) does not know; empty when fine."""
    found = extract(expr)
    return [
        *(f"metric {m!r}" for m in sorted(found.metrics - names.PROMETHEUS_SERIES)),
        *(f"label {label!r}" for label in sorted(found.labels - names.PROMETHEUS_LABELS)),
        *(f"function {f!r}" for f in sorted(found.functions - FUNCTIONS)),
    ]

"""The Prometheus rules pass promtool, follow the conventions, and the Grafana-managed alerts match them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from artifacts import PROMTOOL_TESTS, RUNBOOK, alert_rules, all_panels, grafana_rules, promtool_tests, unknown_names
from promql_tokens import extract, template_labels

import dashboards.config as config
import dashboards.render as render
import dashboards.rules as rules
from dashboards.metrics import L

ALERTS = alert_rules()
ALERT_IDS = [r["alert"] for r in ALERTS]
REQUIRED_BY = set(rules.BY)
STREAM_ALERTS = {rules.STREAM_PENDING_STUCK, rules.STREAM_LAG_GROWING}


def _kept_labels(alert: str) -> set[str]:
    """The labels an alert's aggregation keeps: client and process, or (stream alerts) group and process."""
    return set(rules.BY_STREAM) if alert in STREAM_ALERTS else REQUIRED_BY


def _promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian package prometheus)"
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, timeout=60)


def _runbook_anchors() -> set[str]:
    # GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens.
    headings = re.findall(r"^#+\s+(.+?)\s*$", RUNBOOK.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_promtool_check_rules() -> None:
    done = _promtool("check", "rules", render.RULES_FILE)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests() -> None:
    assert PROMTOOL_TESTS
    done = _promtool("test", "rules", *PROMTOOL_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr


def test_fast_test_profile_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "fast.rules.yml"
    path.write_text(render.rules_yaml(config.FAST_TEST))
    done = _promtool("check", "rules", path)
    assert done.returncode == 0, done.stdout + done.stderr


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


@pytest.mark.parametrize(
    ("profile", "interval"), [(config.PRODUCTION, 60.0), (config.FAST_TEST, 1.0)], ids=["production", "fast-test"]
)
def test_breaker_open_window_outlasts_the_pending_period(profile: config.AlertConfig, interval: float) -> None:
    # A short open keeps the expression true for the window only: it must cover the pending period plus two scrape
    # intervals and one evaluation interval (production: up to 1m each; fast test: 1s), or the open is never fired.
    pending = _seconds(profile.breaker_open_for)
    assert pending > 0, "the breaker-open alert has a pending phase"
    assert _seconds(profile.breaker_open_window) > pending + 3 * interval


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing, quiet = set(), set()
    for content in promtool_tests().values():
        for case in content["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert set(ALERT_IDS) <= firing
    assert set(ALERT_IDS) <= quiet


def test_promtool_test_inputs_use_contract_names() -> None:
    for content in promtool_tests().values():
        for case in content["tests"]:
            for series in case["input_series"]:
                assert unknown_names(series["series"]) == [], series["series"]


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_conventions(rule: dict[str, Any]) -> None:
    assert rule["labels"]["severity"] in {"critical", "warning"}
    annotations = rule["annotations"]
    assert {"summary", "description", "runbook_url"} <= set(annotations)
    base, _, anchor = annotations["runbook_url"].partition("#")
    assert base == config.RUNBOOK_BASE_URL
    assert anchor in _runbook_anchors(), f"runbook.md has no section for {rule['alert']}"
    for text in annotations.values():
        assert template_labels(text) <= _kept_labels(rule["alert"]), "annotations may only use labels the alert keeps"


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_expression_names_selectors_and_aggregation(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    assert unknown_names(expr) == []
    selectors = re.findall(r"\{[^}]*\}", expr)
    assert selectors and all(m in s for s in selectors for m in config.PRODUCTION.job_matchers), "select by job"
    groupings = extract(expr).groupings
    assert groupings
    kept = _kept_labels(rule["alert"])
    # Stream alerts join producers' and consumers' counters by stream (and group) alone: they run in other processes.
    joins = {frozenset([L.STREAM]), frozenset(rules.STREAM_JOIN)} if rule["alert"] in STREAM_ALERTS else set()
    for keyword, labels in groupings:
        assert keyword in {"by", "on"} and (labels >= kept or labels in joins), (keyword, labels)
    assert any(labels >= kept for _, labels in groupings)


def test_runbook_panel_references_exist() -> None:
    titles = {p["title"] for _, p in all_panels()}
    checks = re.findall(r"^\*\*What to check:\*\*(.*?)(?:\n\n|\Z)", RUNBOOK.read_text(encoding="utf-8"), re.M | re.S)
    referenced = {t for block in checks for t in re.findall(r"(?<!\*)\*([^*\n]+)\*(?!\*)", block.replace("\n", " "))}
    assert referenced and referenced <= titles, referenced - titles


def test_grafana_alerts_match_the_prometheus_rules() -> None:
    grafana = {r["title"]: r for r in grafana_rules()}
    assert list(grafana) == ALERT_IDS
    uids = [r["uid"] for r in grafana.values()]
    assert len(set(uids)) == len(uids) and all(len(u) <= 40 for u in uids)
    for rule in ALERTS:
        g = grafana[rule["alert"]]
        data = {d["refId"]: d for d in g["data"]}
        assert g["condition"] in data
        query = data["query"]
        assert query["model"]["expr"] == rule["expr"]
        assert query["datasourceUid"] == config.GRAFANA_DATASOURCE_UID
        assert unknown_names(query["model"]["expr"]) == []
        assert g["for"] == rule["for"]
        assert g["labels"] == rule["labels"]
        assert g["noDataState"] == "OK", "no series means no alert, as in Prometheus"
        for key, text in rule["annotations"].items():
            assert g["annotations"][key] == text.replace("$value", "$values.query.Value")

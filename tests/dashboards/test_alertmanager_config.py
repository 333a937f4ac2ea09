"""The shipped Alertmanager configuration: amtool accepts it, every alert of the rules reaches the receiver of its
severity, and the breaker-open alert inhibits exactly the symptoms of the same client in the same process.

Every alert is taken from the generated rules, so a new alert is covered without touching this file. Inhibition is
checked as pure logic (the config's ``inhibit_rules`` applied to each pair of alerts' labels, with Alertmanager's
semantics); ``test_alertmanager_e2e.py`` checks it with real servers.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from alertmanager_server import E2E_GROUP_WAIT, E2E_RESET_TIMEOUT, E2E_RULES
from artifacts import promtool_tests

import dashboards.alertmanager as alertmanager
import dashboards.config as config
import dashboards.render as render
import dashboards.rules as rules
from dashboards.metrics import L

ROOT = Path(__file__).resolve().parents[2]
RULES = rules.rules()
RULE_IDS = [r.alert for r in RULES]
#: What the issue asks for, spelled out independently of dashboards/alertmanager.py.
SYMPTOMS = {
    rules.HIGH_ERROR_RATIO,
    rules.HIGH_LATENCY,
    rules.RETRY_STORM,
    rules.POOL_SATURATED,
    rules.ACQUIRE_TIMEOUTS,
}
CLIENT = {L.JOB: "orders", L.INSTANCE: "10.0.0.1:9464", L.POOL: "orders-pg"}
#: Stalled stream consumers: never inhibited (a backlog outlives the outage that caused it), paged.
STREAM_ALERTS = {rules.STREAM_PENDING_STUCK, rules.STREAM_LAG_GROWING}


def _amtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    amtool = shutil.which("amtool")
    assert amtool, "amtool is not installed (Debian package prometheus-alertmanager; run scripts/setup.sh)"
    return subprocess.run([amtool, *map(str, args)], capture_output=True, text=True, timeout=30)


def _shipped() -> dict[str, Any]:
    return yaml.safe_load(render.ALERTMANAGER_FILE.read_text(encoding="utf-8"))


def _labels(rule: rules.Rule, **override: str) -> dict[str, str]:
    """The labels Prometheus sends for one alert of ``rule``: the rule's labels, its name, the aggregation labels."""
    return {**CLIENT, **rule.to_dict()["labels"], "alertname": rule.alert, **override}


def _route(labels: dict[str, str], config_file: Path = render.ALERTMANAGER_FILE) -> list[str]:
    done = _amtool("config", "routes", "test", f"--config.file={config_file}", *(f"{k}={v}" for k, v in labels.items()))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip().split(",")


# --- Alertmanager's matching, as pure logic ---------------------------------------------------------------------------
_MATCHER = re.compile(r'^(\w+)\s*(=~|!~|!=|=)\s*"(.*)"$')


def _matches(matcher: str, labels: dict[str, str]) -> bool:
    found = _MATCHER.match(matcher)
    assert found, f"matcher not understood: {matcher}"
    name, op, value = found.groups()
    actual = labels.get(name, "")
    if op in ("=~", "!~"):
        hit = re.fullmatch(value, actual) is not None  # Alertmanager anchors regular expressions
        return hit if op == "=~" else not hit
    return (actual == value) if op == "=" else (actual != value)


def _inhibits(rule: dict[str, Any], source: dict[str, str], target: dict[str, str]) -> bool:
    """Alertmanager's inhibition: the firing source matches, the target matches, the ``equal`` labels are equal."""
    return (
        all(_matches(m, source) for m in rule.get("source_matchers", []))
        and all(_matches(m, target) for m in rule.get("target_matchers", []))
        and all(source.get(label, "") == target.get(label, "") for label in rule.get("equal", []))
    )


def _inhibited_by(source: dict[str, str], target: dict[str, str]) -> bool:
    return any(_inhibits(r, source, target) for r in _shipped()["inhibit_rules"])


# --- tests ------------------------------------------------------------------------------------------------------------
def test_amtool_check_config() -> None:
    done = _amtool("check-config", render.ALERTMANAGER_FILE)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_check_config_rejects_a_broken_file(tmp_path: Path) -> None:
    # The check above can fail: a route naming a receiver the file does not define is refused.
    broken = _shipped()
    broken["route"]["routes"][0]["routes"][0]["receiver"] = "nobody"
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    done = _amtool("check-config", path)
    assert done.returncode != 0
    assert "nobody" in done.stdout + done.stderr


@pytest.mark.parametrize("rule", RULES, ids=RULE_IDS)
def test_every_alert_reaches_the_receiver_of_its_severity(rule: rules.Rule) -> None:
    expected = {r.severity: r.receiver for r in config.ROUTING.routes}[rule.severity]
    assert _route(_labels(rule)) == [expected]


def test_severities_page_or_ticket() -> None:
    by_receiver = {r.receiver: r.severity for r in config.ROUTING.routes}
    assert by_receiver == {"trading-shared-page": "critical", "trading-shared-ticket": "warning"}
    assert _route(_labels(RULES[0], severity="info")) == [config.ROUTING.default_receiver]


def test_other_alerts_are_left_to_the_root_route(tmp_path: Path) -> None:
    # Merged into a team's config, the trading-shared route must not catch the team's own alerts.
    merged = _shipped()
    merged["route"]["receiver"] = "team-default"
    merged["receivers"].append({"name": "team-default"})
    path = tmp_path / "merged.yml"
    path.write_text(yaml.safe_dump(merged))
    assert _route({"alertname": "DiskFull", "severity": "critical", **CLIENT}, path) == ["team-default"]
    assert _route({"alertname": "TradingSharedSomethingElse", "severity": "critical"}, path) == ["team-default"]
    assert _route(_labels(RULES[0]), path) != ["team-default"]


def test_one_group_per_alert_per_client_per_process() -> None:
    # Not per client alone: see test_alertmanager_server.py, a symptom resolved under inhibition.
    route = _shipped()["route"]["routes"][0]
    assert route["group_by"] == ["alertname", L.JOB, L.INSTANCE, L.POOL]
    assert all("group_by" not in child for child in route["routes"]), "children inherit the grouping"


def test_inhibition_equal_labels_are_labels_the_inhibiting_and_inhibited_alerts_carry() -> None:
    (rule,) = _shipped()["inhibit_rules"]
    assert set(rule["equal"]) == set(rules.BY) == {L.JOB, L.INSTANCE, L.POOL}
    # The promtool tests show the labels Prometheus really gives each alert.
    carried: dict[str, list[set[str]]] = {}
    for content in promtool_tests().values():
        for case in content["tests"]:
            for check in case.get("alert_rule_test", []):
                for alert in check.get("exp_alerts") or []:
                    carried.setdefault(check["alertname"], []).append(set(alert["exp_labels"]))
    assert set(carried) == set(RULE_IDS)
    for alertname in SYMPTOMS | {rules.BREAKER_OPEN}:
        assert all(set(rule["equal"]) <= labels for labels in carried[alertname]), alertname
    # The stream alerts carry no client: a group's figures describe the group, whichever client observes it.
    for alertname in STREAM_ALERTS:
        assert all(L.POOL not in labels and {L.STREAM, L.GROUP} <= labels for labels in carried[alertname])


def test_a_redis_breaker_open_never_silences_a_stream_alert() -> None:
    # Even with the labels of the breaker's own process and client, a stalled consumer group is notified.
    (breaker,) = (r for r in RULES if r.alert == rules.BREAKER_OPEN)
    source = _labels(breaker)
    for rule in RULES:
        if rule.alert in STREAM_ALERTS:
            target = _labels(rule, **{L.STREAM: "md:fills", L.GROUP: "booking"})
            assert not _inhibited_by(source, target), rule.alert
            assert _route(target) == ["trading-shared-page"], rule.alert


@pytest.mark.parametrize("target", RULES, ids=RULE_IDS)
def test_what_inhibits_each_alert(target: rules.Rule) -> None:
    inhibitors = [s.alert for s in RULES if _inhibited_by(_labels(s), _labels(target))]
    assert inhibitors == ([rules.BREAKER_OPEN] if target.alert in SYMPTOMS else [])


@pytest.mark.parametrize("label", [L.JOB, L.INSTANCE, L.POOL])
@pytest.mark.parametrize("target", [r for r in RULES if r.alert in SYMPTOMS], ids=sorted(SYMPTOMS, key=RULE_IDS.index))
def test_inhibition_stays_within_one_client_of_one_process(target: rules.Rule, label: str) -> None:
    (breaker,) = (r for r in RULES if r.alert == rules.BREAKER_OPEN)
    assert _inhibited_by(_labels(breaker), _labels(target))
    assert not _inhibited_by(_labels(breaker, **{label: "other"}), _labels(target))


def test_every_alert_is_classified_and_a_new_one_must_be() -> None:
    assert set(alertmanager.INHIBITED_BY_BREAKER_OPEN) == SYMPTOMS
    assert set(alertmanager.NOT_INHIBITED) | SYMPTOMS == set(RULE_IDS)
    new = dataclasses.replace(RULES[0], alert="TradingSharedNew")
    with pytest.raises(alertmanager.RoutingError, match="TradingSharedNew"):
        alertmanager.alertmanager_config([*RULES, new])
    unrouted = dataclasses.replace(RULES[0], severity="info")
    with pytest.raises(alertmanager.RoutingError, match="info"):
        alertmanager.alertmanager_config([unrouted, *RULES[1:]])


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)(ms|s|m|h)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _profiles() -> list[Any]:
    from trading_shared.settings import BreakerSettings  # only here: the rest of this file needs no SDK

    production = (config.PRODUCTION, {r.severity: r.group_wait for r in config.ROUTING.routes}, 60.0)
    return [
        pytest.param(*production, BreakerSettings().reset_timeout, id="production"),
        pytest.param(E2E_RULES, E2E_GROUP_WAIT, 1.0, E2E_RESET_TIMEOUT, id="e2e-test"),
    ]


PROFILES = pytest.mark.parametrize(("cfg", "group_wait", "interval", "reset_timeout"), _profiles())


@PROFILES
def test_symptoms_wait_for_the_breaker_alert_before_notifying(
    cfg: config.AlertConfig, group_wait: dict[str, str], interval: float, reset_timeout: float
) -> None:
    # A symptom that fires with the breaker (or before it) is held by its group_wait until the breaker-open alert
    # fires and inhibits it: breaker_open_for plus two evaluation intervals (scrape and evaluation: 1 minute each in
    # production, as a worst case).
    breaker_fires_within = _seconds(cfg.breaker_open_for) + 2 * interval
    for rule in rules.rules(cfg):
        if rule.alert in SYMPTOMS:
            assert _seconds(rule.for_) + _seconds(group_wait[rule.severity]) > breaker_fires_within, rule.alert


@PROFILES
def test_breaker_alert_outlasts_its_symptoms_after_recovery(
    cfg: config.AlertConfig, group_wait: dict[str, str], interval: float, reset_timeout: float
) -> None:
    # After recovery the symptoms clear once their windows no longer hold the outage; the breaker-open alert clears
    # once its last open (up to a reset timeout before the breaker closed) is older than its window. If it cleared
    # first, a symptom still firing would no longer be inhibited and page a second time (seen in the e2e test with
    # FAST_TEST's 7s window against its 10s rate window).
    symptom_windows = max(_seconds(cfg.rate_window), _seconds(cfg.acquire_timeout_window))
    assert _seconds(cfg.breaker_open_window) > symptom_windows + reset_timeout + 2 * interval


def test_placeholder_receivers_send_nowhere_real() -> None:
    receivers = _shipped()["receivers"]
    assert [r["name"] for r in receivers] == alertmanager.receivers()
    for receiver in receivers:
        (hook,) = receiver["webhook_configs"]
        assert hook["url"].startswith("http://alert-receiver.invalid/"), "placeholder: .invalid never resolves"
        assert hook["send_resolved"] is True


def test_runbook_urls_default_to_the_shipped_runbook_and_are_configurable(tmp_path: Path) -> None:
    for rule in RULES:
        path, _, anchor = rule.to_dict()["annotations"]["runbook_url"].partition("#")
        assert (ROOT / path).resolve() == (ROOT / "dashboards" / "runbook.md").resolve()
        assert anchor == rules.runbook_anchor(rule.alert)
    base = "https://git.example.com/team/trading-shared/blob/main/dashboards/runbook.md"
    custom = yaml.safe_load(render.rules_yaml(dataclasses.replace(config.PRODUCTION, runbook_base_url=base)))
    urls = [r["annotations"]["runbook_url"] for g in custom["groups"] for r in g["rules"]]
    assert urls == [f"{base}#{rules.runbook_anchor(a)}" for a in RULE_IDS]


def test_check_command_takes_the_runbook_url() -> None:
    # The committed files use the default: checked against another URL, every rule file differs.
    done = subprocess.run(
        [sys.executable, "dashboards/generate.py", "--check", "--runbook-url", "https://runbooks.example.com/ts.md"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "+      runbook_url: https://runbooks.example.com/ts.md#tradingsharedcircuitbreakeropen" in done.stderr


def test_runbook_says_what_is_inhibited_by_what() -> None:
    text = (ROOT / "dashboards" / "runbook.md").read_text(encoding="utf-8")
    section = text.split("## Notifications: who is told, and what is inhibited by what", 1)[1].split("\n## ", 1)[0]
    inhibited = re.search(r"are inhibited:\*\*(.*?)\. They", section, re.S)
    never = re.search(r"\*\*Never inhibited:\*\*(.*?)\n- ", section, re.S)
    assert inhibited and never
    assert set(re.findall(r"TradingShared\w+", inhibited.group(1))) == set(alertmanager.INHIBITED_BY_BREAKER_OPEN)
    assert set(re.findall(r"TradingShared\w+", never.group(1))) == set(alertmanager.NOT_INHIBITED)
    for route in config.ROUTING.routes:
        assert f"`{route.receiver}`" in section

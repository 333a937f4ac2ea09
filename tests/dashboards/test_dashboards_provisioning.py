"""The example provisioning files are valid Grafana provisioning files that fit the generated ones."""

from __future__ import annotations

import re

import yaml

import dashboards.config as config
import dashboards.render as render

PROVISIONING = render.HERE / "provisioning"


def _load(relative: str) -> dict[str, object]:
    return yaml.safe_load((PROVISIONING / relative).read_text(encoding="utf-8"))


def test_datasource_example() -> None:
    content = _load("datasources/trading-shared-prometheus.yaml")
    assert content["apiVersion"] == 1
    [datasource] = content["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["jsonData"]["timeInterval"], "$__rate_interval needs the scrape interval"


def test_dashboard_provider_example() -> None:
    content = _load("dashboards/trading-shared.yaml")
    assert content["apiVersion"] == 1
    [provider] = content["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


def test_grafana_alerts_use_an_environment_placeholder_for_the_datasource() -> None:
    content = yaml.safe_load(render.GRAFANA_ALERTS_FILE.read_text(encoding="utf-8"))
    assert content["apiVersion"] == 1
    assert re.fullmatch(r"\$\{[A-Z_]+\}", config.GRAFANA_DATASOURCE_UID)
    for group in content["groups"]:
        assert group["folder"] and group["interval"]
        for rule in group["rules"]:
            assert rule["data"][0]["datasourceUid"] == config.GRAFANA_DATASOURCE_UID
            # Grafana expands $VAR in labels (not in annotations or query models) when provisioning.
            assert "$" not in str(rule["labels"])

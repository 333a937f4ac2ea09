"""Properties every generated dashboard and panel must have."""

from __future__ import annotations

from typing import Any

import pytest
from artifacts import all_panels, generated_dashboards, unknown_names
from promql_tokens import extract, legend_labels

import dashboards.config as config
from dashboards.metrics import names

PANELS = all_panels()
DASHBOARDS = generated_dashboards()
RATE_FUNCTIONS = {"rate", "irate", "increase"}


def _ids(items: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in items]


def test_both_dashboards_are_generated() -> None:
    assert set(DASHBOARDS) == {f"{config.OVERVIEW_UID}.json", f"{config.SYSTEMS_UID}.json"}


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS.items(), ids=list(DASHBOARDS))
def test_dashboard_settings(name: str, dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 41
    assert f"{dashboard['uid']}.json" == name
    assert len(dashboard["uid"]) <= 40
    assert "id" not in dashboard, "an id would make import overwrite whatever dashboard has it"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables[config.DATASOURCE_VARIABLE]["type"] == "datasource"
    assert variables[config.DATASOURCE_VARIABLE]["query"] == "prometheus"
    assert variables[config.JOB_VARIABLE]["type"] == "query"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and all(i > 0 for i in ids), "panel ids must be unique and stable"


def test_overview_repeats_one_row_per_client() -> None:
    overview = DASHBOARDS[f"{config.OVERVIEW_UID}.json"]
    client = next(v for v in overview["templating"]["list"] if v["name"] == config.CLIENT_VARIABLE)
    assert client["multi"] and client["includeAll"]
    rows = [p for p in overview["panels"] if p["type"] == "row"]
    assert [r.get("repeat") for r in rows] == [config.CLIENT_VARIABLE]
    for panel in overview["panels"][1:]:
        for target in panel["targets"]:
            assert f"${config.CLIENT_VARIABLE}" in target["expr"], panel["title"]


def test_overview_has_the_promised_panels() -> None:
    overview = DASHBOARDS[f"{config.OVERVIEW_UID}.json"]
    by_type = {p["title"]: p["type"] for p in overview["panels"] if p["type"] != "row"}
    assert by_type["Circuit breaker state"] == "state-timeline"
    assert {
        "Circuit breaker transitions",
        "Operations/s",
        "Error ratio",
        "Latency by operation",
        "Retries/s by error type",
        "Breaker rejections/s",
        "Pool connections",
        "Pending connection requests",
        "Connection acquire wait p99",
        "Connection acquire timeouts/s",
        "Dead-lettered messages",
    } <= set(by_type)


@pytest.mark.parametrize(("name", "panel"), PANELS, ids=_ids(PANELS))
def test_panel_has_description_unit_and_datasource(name: str, panel: dict[str, Any]) -> None:
    assert panel.get("description", "").strip(), "every panel needs a description"
    assert panel["fieldConfig"]["defaults"].get("unit"), "every panel needs a unit"
    assert panel["datasource"] == {"type": "prometheus", "uid": f"${{{config.DATASOURCE_VARIABLE}}}"}
    assert panel["targets"], "a panel without queries"


@pytest.mark.parametrize(("name", "panel"), PANELS, ids=_ids(PANELS))
def test_panel_queries_use_only_contract_names(name: str, panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        assert unknown_names(target["expr"]) == [], target["expr"]
        assert legend_labels(target.get("legendFormat", "")) <= names.PROMETHEUS_LABELS, target["legendFormat"]


@pytest.mark.parametrize(("name", "panel"), PANELS, ids=_ids(PANELS))
def test_panel_rates_use_rate_interval_and_select_by_job(name: str, panel: dict[str, Any]) -> None:
    for target in panel["targets"]:
        ranges = extract(target["expr"]).ranges
        assert all(text == "$__rate_interval" for func, text in ranges if func in RATE_FUNCTIONS), ranges
        assert f'job=~"${config.JOB_VARIABLE}"' in target["expr"]


@pytest.mark.parametrize(("name", "dashboard"), DASHBOARDS.items(), ids=list(DASHBOARDS))
def test_variable_queries_use_only_contract_names(name: str, dashboard: dict[str, Any]) -> None:
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert unknown_names(variable["query"]) == [], variable["query"]

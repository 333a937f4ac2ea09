"""Properties every generated dashboard and panel must have."""

from __future__ import annotations

from typing import Any

import pytest
from artifacts import all_panels, generated_dashboards, unknown_names
from promql_tokens import extract, legend_labels

import dashboards.config as config
from dashboards import statements, streams
from dashboards.metrics import L, names

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


def _rows(dashboard: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Panels by the title of the row above them."""
    out: dict[str, list[dict[str, Any]]] = {}
    current = ""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            current = panel["title"]
            out[current] = []
        else:
            out.setdefault(current, []).append(panel)
    return out


def test_overview_repeats_one_row_per_client_then_statements_and_streams() -> None:
    overview = DASHBOARDS[f"{config.OVERVIEW_UID}.json"]
    client = next(v for v in overview["templating"]["list"] if v["name"] == config.CLIENT_VARIABLE)
    assert client["multi"] and client["includeAll"]
    rows = [p for p in overview["panels"] if p["type"] == "row"]
    assert [(r["title"], r.get("repeat")) for r in rows] == [
        (f"${config.CLIENT_VARIABLE}", config.CLIENT_VARIABLE),
        (statements.TITLE, None),
        (streams.TITLE, None),
    ]
    by_row = _rows(overview)
    for panel in by_row[f"${config.CLIENT_VARIABLE}"] + by_row[statements.TITLE]:
        for target in panel["targets"]:
            assert f"${config.CLIENT_VARIABLE}" in target["expr"], panel["title"]
    # Stream group figures carry no client label: filtering them by $client would empty the panels.
    for panel in by_row[streams.TITLE]:
        for target in panel["targets"]:
            assert f"${config.CLIENT_VARIABLE}" not in target["expr"], panel["title"]
            assert {"by", frozenset({L.STREAM, L.GROUP})} & {kw for kw, _ in extract(target["expr"]).groupings}


def test_statement_panels_stay_bounded_whatever_the_number_of_statements() -> None:
    # topk keeps each panel to STATEMENT_TOPK series per step; the SDK's cap (then _OTHER) bounds what is stored.
    panels = _rows(DASHBOARDS[f"{config.OVERVIEW_UID}.json"])[statements.TITLE]
    summary_panels = [p for p in panels if any(L.QUERY_SUMMARY in extract(t["expr"]).labels for t in p["targets"])]
    assert len(summary_panels) == 3
    for panel in summary_panels:
        for target in panel["targets"]:
            assert target["expr"].startswith(f"topk({config.STATEMENT_TOPK}, "), panel["title"]
            assert f'{L.SYSTEM}="{names.SYSTEM_POSTGRESQL}"' in target["expr"]
            assert L.QUERY_SUMMARY in target["legendFormat"]


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
        f"Slowest statements (p99, top {config.STATEMENT_TOPK})",
        f"Time share by statement (top {config.STATEMENT_TOPK})",
        f"Errors/s by statement (top {config.STATEMENT_TOPK})",
        "Statements past the summary cap",
        "Consumer-group lag",
        "Pending entries",
        "Oldest pending entry age",
        "Processing age (append to acknowledgement)",
        "Produced vs consumed/s",
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

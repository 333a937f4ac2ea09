"""panel_queries expands a dashboard's queries as Grafana does."""

from __future__ import annotations

import json

import pytest
from panel_queries import interpolate, panel_queries

import dashboards.config as config
import dashboards.render as render


def _dashboard(panels: list[dict[str, object]]) -> dict[str, object]:
    return {
        "templating": {
            "list": [
                {"name": "job", "multi": True, "includeAll": True},
                {"name": "client", "multi": True, "includeAll": True},
                {"name": "single", "multi": False},
            ]
        },
        "panels": panels,
    }


def _panel(title: str, *exprs: str, **extra: object) -> dict[str, object]:
    return {"type": "timeseries", "title": title, "targets": [{"expr": e, "refId": "A"} for e in exprs], **extra}


def test_variables_in_all_syntaxes() -> None:
    d = _dashboard([_panel("p", 'rate(m{job=~"$job", x="${single}", y=~"[[client]]"}[$__rate_interval])')])
    out = panel_queries(d, {"job": "orders", "client": "a", "single": "s", "__rate_interval": "4s"})
    assert out == [("p", 'rate(m{job=~"orders", x="s", y=~"a"}[4s])')]


def test_multi_values_are_escaped_and_joined_like_grafana() -> None:
    assert interpolate('m{job=~"$job"}', {"job": ["a.b", "c"]}, {"job": True}) == 'm{job=~"(a\\\\.b|c)"}'
    assert interpolate("$x", {"x": "it's"}, {}) == "it\\'s"


def test_builtins_default_and_unknown_variables_fail() -> None:
    assert panel_queries(_dashboard([_panel("p", "rate(m[$__rate_interval])")]), {}) == [("p", "rate(m[1m])")]
    with pytest.raises(KeyError, match="nope"):
        panel_queries(_dashboard([_panel("p", "m{a=~'$nope'}")]), {})
    with pytest.raises(ValueError, match="one value"):
        interpolate("$single", {"single": ["a", "b"]}, {"single": False})


def test_repeated_rows_give_one_query_per_value_and_hidden_targets_are_skipped() -> None:
    d = _dashboard(
        [
            _panel("before", 'm{c=~"$client"}'),
            {"type": "row", "title": "$client", "repeat": "client", "panels": []},
            _panel("in row", 'm{c=~"$client"}'),
            {"type": "row", "title": "collapsed", "collapsed": True, "panels": [_panel("nested", "n")]},
            _panel("hidden", "h", targets=[{"expr": "h", "hide": True}]),
        ]
    )
    out = panel_queries(d, {"client": ["a", "b"]})
    assert out == [
        ("before", 'm{c=~"(a|b)"}'),
        ("in row (client=a)", 'm{c=~"a"}'),
        ("in row (client=b)", 'm{c=~"b"}'),
        ("nested", "n"),
    ]


def test_generated_overview_expands_completely() -> None:
    overview = json.loads((render.GENERATED_DIR / f"{config.OVERVIEW_UID}.json").read_text())
    out = panel_queries(overview, {"job": "orders", "client": ["main-pg", "quotes"], "__rate_interval": "4s"})
    # The client row's panels once per client; the statement and stream rows (not repeated) once.
    rows = [i for i, p in enumerate(overview["panels"]) if p["type"] == "row"]
    assert [overview["panels"][i].get("repeat") for i in rows] == ["client", None, None]
    repeated = sum(len(p.get("targets", [])) for p in overview["panels"][rows[0] : rows[1]])
    once = sum(len(p.get("targets", [])) for p in overview["panels"][rows[1] :])
    assert len(out) == 2 * repeated + once
    assert all("$" not in expr for _, expr in out)
    assert sum('=~"(main-pg|quotes)"' in expr for _, expr in out) > 0, "unrepeated rows see every selected client"

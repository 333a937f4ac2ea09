"""Panel and variable factories shared by the dashboards: every panel gets a datasource, a unit and a description."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, statetimeline, timeseries
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards import config

DATASOURCE = dashboard_models.DataSourceRef(type_val="prometheus", uid=f"${{{config.DATASOURCE_VARIABLE}}}")

#: Panel sizes on Grafana's 24-column grid.
FULL, HALF, THIRD = 24, 12, 8
HEIGHT = 8


@dataclass(frozen=True)
class Query:
    """One PromQL target of a panel and the legend of the series it returns."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Step:
    """A colour from a threshold value upwards (``None``: from minus infinity)."""

    value: float | None
    color: str


def _targets(queries: Sequence[Query]) -> list[prometheus.Dataquery]:
    return [
        prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).range()
        for i, q in enumerate(queries)
    ]


def _thresholds(steps: Sequence[Step]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=s.value, color=s.color) for s in steps])
    )


def time_series(
    title: str,
    description: str,
    unit: str,
    queries: Sequence[Query],
    *,
    width: int = HALF,
    bars: bool = False,
    thresholds: Sequence[Step] = (),
) -> timeseries.Panel:
    """A time series panel; ``bars`` for counts of discrete events, ``thresholds`` drawn as dashed lines."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .height(HEIGHT)
        .span(width)
        .min(0)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
    )
    if bars:
        panel = panel.draw_style(common.GraphDrawStyle.BARS).fill_opacity(80)
    if thresholds:
        panel = panel.thresholds(_thresholds(thresholds)).thresholds_style(
            common_builders.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)
        )
    return panel


def state_timeline(
    title: str,
    description: str,
    queries: Sequence[Query],
    states: Mapping[float, tuple[str, str]],
    *,
    width: int = HALF,
) -> statetimeline.Panel:
    """A state timeline whose numeric values are mapped to ``states[value] = (text, colour)``."""
    options = {
        f"{value:g}": dashboard_models.ValueMappingResult(text=text, color=color, index=i)
        for i, (value, (text, color)) in enumerate(sorted(states.items()))
    }
    return (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .unit("none")
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .height(HEIGHT)
        .span(width)
        .mappings([dashboard_models.ValueMap(options=options)])
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .fill_opacity(80)
        .line_width(0)
    )


def datasource_variable() -> dashboard_builders.DatasourceVariable:
    """``$datasource``: any Prometheus data source."""
    return dashboard_builders.DatasourceVariable(config.DATASOURCE_VARIABLE).label("Data source").type("prometheus")


def query_variable(name: str, label: str, query: str, *, description: str) -> dashboard_builders.QueryVariable:
    """A multi-select label-values variable with an All option, refreshed when the time range changes."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .description(description)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(dashboard_models.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dashboard_models.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
    )


def custom_variable(
    name: str, label: str, values: Sequence[str], *, description: str
) -> dashboard_builders.CustomVariable:
    """A multi-select variable over fixed values, with an All option."""
    return (
        dashboard_builders.CustomVariable(name)
        .label(label)
        .description(description)
        .values(",".join(values))
        .multi(True)
        .include_all(True)
    )

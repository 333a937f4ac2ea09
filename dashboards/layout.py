"""A dashboard under construction: common settings, rows and panels laid out in order with stable ids."""

from __future__ import annotations

from collections.abc import Sequence

from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.models import dashboard as dashboard_models

from dashboards import config
from dashboards.panels import datasource_variable


def legend(label: str) -> str:
    """Legend template showing a label's value."""
    return "{{" + label + "}}"


class Layout:
    """Wraps the SDK's dashboard builder; panel ids count up from 1 in the order panels are added."""

    def __init__(
        self,
        title: str,
        uid: str,
        description: str,
        variables: Sequence[Builder[dashboard_models.VariableModel]],
    ) -> None:
        self._next_id = 1
        self.dashboard = (
            dashboard_builders.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(list(config.DASHBOARD_TAGS))
            .editable()
            .refresh(config.DASHBOARD_REFRESH)
            .time(config.DASHBOARD_TIME_FROM, "now")
            .timezone("browser")
            .tooltip(dashboard_models.DashboardCursorSync.CROSSHAIR)
            .with_variable(datasource_variable())
        )
        for variable in variables:
            self.dashboard = self.dashboard.with_variable(variable)

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def row(self, title: str, *, repeat: str | None = None) -> None:
        """Start a row; with ``repeat`` Grafana repeats it and its panels once per value of that variable."""
        row = dashboard_builders.Row(title).id(self._id())
        if repeat:
            row = row.repeat(repeat)
        self.dashboard = self.dashboard.with_row(row)

    def panel(self, panel: Builder[dashboard_models.Panel]) -> None:
        """Add a panel after the previous one, wrapping to a new line at 24 columns."""
        panel.id(self._id())  # type: ignore[attr-defined]
        self.dashboard = self.dashboard.with_panel(panel)

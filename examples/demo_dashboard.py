"""Draw the overview dashboard's main panels as a PNG, from a Prometheus's query_range data (no Grafana needed).

The queries are the dashboard's own: read from ``dashboards/generated/trading-shared-overview.json`` and expanded
the way Grafana would (``$job``, ``$client``, ``$__rate_interval``), one column per client. Panels: Operations/s,
Error ratio, p99 latency by operation, Circuit breaker state, Pool connections; then the PostgreSQL statement panels
beside the Redis stream panels.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests" / "dashboards") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests" / "dashboards"))

from panel_queries import interpolate  # noqa: E402  (tests/dashboards, like demo_servers.py's helpers)

OVERVIEW = ROOT / "dashboards" / "generated" / "trading-shared-overview.json"

#: (dashboard panel title, y-axis label, keep only targets whose legend starts with this prefix)
Panel = tuple[str, str, str]
#: One row per entry: the panel in every client's column, or a mapping client -> that column's panel.
PANELS: tuple[Panel | dict[str, Panel], ...] = (
    ("Operations/s", "calls/s", ""),
    ("Error ratio", "failed / all", ""),
    ("Latency by operation", "p99 seconds", "p99"),
    ("Circuit breaker state", "state", ""),
    ("Pool connections", "connections", ""),
    {
        "postgres": ("Slowest statements (p99, top 10)", "p99 seconds", ""),
        "redis": ("Consumer-group lag", "entries", ""),
    },
    {
        "postgres": ("Time share by statement (top 10)", "seconds/s", ""),
        "redis": ("Processing age (append to acknowledgement)", "p99 seconds", "p99"),
    },
)


def _panel(row: Panel | dict[str, Panel], client: str) -> Panel | None:
    return row.get(client) if isinstance(row, dict) else row


def _all_panels() -> list[Panel]:
    return [p for row in PANELS for p in (row.values() if isinstance(row, dict) else [row])]


_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")
QueryRange = Callable[[str, float, float, str], list[dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """One query of one panel, expanded for one client."""

    expr: str
    legend: str


def panel_targets(client: str, job: str, rate_interval: str) -> dict[str, list[Target]]:
    """Panel title -> its expanded queries, for one client, from the committed overview dashboard."""
    dashboard = json.loads(OVERVIEW.read_text())
    templating = dashboard.get("templating", {}).get("list", [])
    multi = {v["name"]: bool(v.get("multi") or v.get("includeAll")) for v in templating}
    values = {"job": job, "client": client, "__rate_interval": rate_interval, "__interval": "1s", "__range": "1h"}
    wanted = {title: prefix for title, _, prefix in _all_panels()}
    found: dict[str, list[Target]] = {}

    def visit(panels: Sequence[dict[str, Any]]) -> None:
        for panel in panels:
            visit(panel.get("panels") or [])
            title = panel.get("title", "")
            if title not in wanted:
                continue
            for target in panel.get("targets", []):
                legend = target.get("legendFormat", "")
                if "expr" in target and not target.get("hide") and legend.startswith(wanted[title]):
                    found.setdefault(title, []).append(Target(interpolate(target["expr"], values, multi), legend))

    visit(dashboard.get("panels", []))
    return found


def _label(legend: str, metric: dict[str, str]) -> str:
    return _LEGEND.sub(lambda m: metric.get(m.group(1), ""), legend) or "value"


def _fold_pool_max(
    ax: Any, panel: str, drawn: list[tuple[str, tuple[datetime, ...], tuple[float, ...]]]
) -> list[tuple[str, tuple[datetime, ...], tuple[float, ...]]]:
    """A pool maximum far above the connections in use would flatten them: name it in the title instead."""
    if panel != "Pool connections":
        return drawn
    cap = [max(ys) for label, _, ys in drawn if label == "max"]
    others = [max((y for y in ys if y == y), default=0.0) for label, _, ys in drawn if label != "max"]
    if cap and others and cap[0] > 4 * max(max(others), 1.0):
        ax.set_title(f"{ax.get_title(loc='left')} (max {cap[0]:.0f}, off the scale)", fontsize=10, loc="left")
        return [d for d in drawn if d[0] != "max"]
    return drawn


def draw_dashboard(
    query_range: QueryRange,
    *,
    job: str,
    clients: Sequence[str],
    start: float,
    end: float,
    path: Path,
    shaded: Sequence[tuple[float, float, str]] = (),
    title: str = "trading-shared / Clients",
    rate_interval: str = "4s",
) -> Path:
    """Query every panel for every client over ``[start, end]`` and write the PNG; returns ``path``.

    ``shaded``: ``(from, to, label)`` spans (epoch seconds) drawn on every panel, e.g. an outage.
    """
    fig, axes = plt.subplots(
        len(PANELS), len(clients), figsize=(7.5 * len(clients), 2.6 * len(PANELS)), sharex=True, squeeze=False
    )
    fig.suptitle(
        f"{title}   (job={job}, {datetime.fromtimestamp(start):%H:%M:%S}-{datetime.fromtimestamp(end):%H:%M:%S})",
        fontsize=13,
        fontweight="bold",
    )
    for col, client in enumerate(clients):
        targets = panel_targets(client, job, rate_interval)
        for row, cell in enumerate(PANELS):
            ax = axes[row][col]
            chosen = _panel(cell, client)
            if chosen is None:
                ax.set_axis_off()
                continue
            panel, ylabel, _ = chosen
            ax.set_title(f"{panel} - {client}", fontsize=10, loc="left")
            ax.set_ylabel(ylabel, fontsize=8)
            ax.grid(True, alpha=0.3)
            ax.tick_params(labelsize=8)
            for begin, finish, label in shaded:
                ax.axvspan(
                    datetime.fromtimestamp(begin),
                    datetime.fromtimestamp(finish),
                    color="tab:red",
                    alpha=0.12,
                    label=label if row == 0 else None,
                )
            drawn: list[tuple[str, tuple[datetime, ...], tuple[float, ...]]] = []
            for target in targets.get(panel, []):
                for series in query_range(target.expr, start, end, "1s"):
                    points = [(datetime.fromtimestamp(float(t)), float(v)) for t, v in series["values"]]
                    if all(v != v for _, v in points):  # only NaN (e.g. a quantile of no calls)
                        continue
                    xs, ys = zip(*points, strict=True)
                    drawn.append((_label(target.legend, series["metric"]), xs, ys))
            drawn = _fold_pool_max(ax, panel, drawn)
            for label, xs, ys in drawn:
                if panel == "Circuit breaker state":
                    ax.step(xs, ys, where="post", linewidth=1.6, label=label)
                else:
                    ax.plot(xs, ys, linewidth=1.3, label=label)
            lines = len(drawn)
            if panel == "Circuit breaker state":
                ax.set_yticks([0, 1, 2], ["closed", "half-open", "open"])
                ax.set_ylim(-0.2, 2.3)
            elif panel == "Error ratio":
                ax.yaxis.set_major_formatter(mticker.PercentFormatter(1.0))
                ax.set_ylim(bottom=0, top=max(0.05, ax.get_ylim()[1]))
            else:
                ax.set_ylim(bottom=0)
            if lines == 0:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
            if lines or (row == 0 and shaded):
                ax.legend(fontsize=7, loc="upper left", ncol=2 if lines > 4 else 1, framealpha=0.7)
    for ax in axes[-1]:
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))  # type: ignore[no-untyped-call]
        ax.set_xlabel("time", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["PANELS", "draw_dashboard", "panel_targets"]

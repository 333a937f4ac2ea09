"""Expand a dashboard's panel queries the way Grafana does, to run them against a real Prometheus.

Handles ``$var``, ``${var}``, ``${var:format}`` (format ignored) and ``[[var]]``; multi-value / include-All
variables are regex-escaped and joined as ``(a|b)`` like Grafana's Prometheus data source; rows and panels
repeated over a variable produce one copy per value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Value = str | Sequence[str]

#: Grafana's built-ins, when the caller does not set them.
DEFAULT_BUILTINS: Mapping[str, str] = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}

_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)(?::[^\]]*)?\]\]")
_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


def _regex_escape(value: str) -> str:
    # Grafana's prometheusSpecialRegexEscape: escaped once for the regex, once more for the PromQL string.
    return _REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value.replace("\\", "\\\\\\\\"))


def _format(value: Value, multi: bool) -> str:
    if not multi:
        if not isinstance(value, str):
            raise ValueError(f"variable allows one value, got {value!r}")
        return value.replace("\\", "\\\\").replace("'", "\\'")
    values = [value] if isinstance(value, str) else list(value)
    escaped = [_regex_escape(v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def interpolate(text: str, values: Mapping[str, Value], multi: Mapping[str, bool]) -> str:
    """Replace every variable reference in ``text``; an unknown variable raises KeyError."""

    def replace(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        if name not in values:
            raise KeyError(f"no value for variable ${name} in {text!r}")
        return _format(values[name], multi.get(name, False))

    return _VARIABLE.sub(replace, text)


def _repeat_groups(panels: Sequence[Mapping[str, Any]]) -> Iterator[tuple[str | None, Mapping[str, Any]]]:
    """``(repeat variable of the enclosing row, panel)`` for every non-row panel, in dashboard order."""
    row_repeat = None
    for panel in panels:
        if panel.get("type") == "row":
            row_repeat = panel.get("repeat") or None
            for nested in panel.get("panels") or []:
                yield row_repeat, nested
        else:
            yield row_repeat, panel


def panel_queries(dashboard: Mapping[str, Any], variables: Mapping[str, Value]) -> list[tuple[str, str]]:
    """``(panel title, expanded PromQL)`` for every visible Prometheus query of ``dashboard`` (its JSON model).

    ``variables`` maps variable names (without ``$``) to a value or a list of values, e.g.
    ``{"job": "orders", "client": ["main-pg", "quotes"], "__rate_interval": "4s"}``. A panel in a row repeated over
    ``client`` is returned once per client, titled ``"<title> (client=<value>)"``.
    """
    templating = dashboard.get("templating", {}).get("list", [])
    multi = {v["name"]: bool(v.get("multi") or v.get("includeAll")) for v in templating}
    values: dict[str, Value] = {**DEFAULT_BUILTINS, **variables}
    out = []
    for row_repeat, panel in _repeat_groups(dashboard.get("panels", [])):
        repeat = panel.get("repeat") or row_repeat
        if repeat:
            if repeat not in values:
                raise KeyError(f"no value for repeat variable ${repeat}")
            copies = [
                (f" ({repeat}={v})", {**values, repeat: v})
                for v in ([values[repeat]] if isinstance(values[repeat], str) else values[repeat])
            ]
        else:
            copies = [("", values)]
        for suffix, bound in copies:
            for target in panel.get("targets", []):
                if "expr" in target and not target.get("hide"):
                    out.append((panel.get("title", "") + suffix, interpolate(target["expr"], bound, multi)))
    return out

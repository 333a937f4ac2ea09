"""A few string builders for PromQL, so queries read as what they compute rather than as punctuation."""

from __future__ import annotations

from collections.abc import Iterable

from dashboards.metrics import L


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def eq(label: str, value: str) -> str:
    """Matcher ``label="value"``."""
    return f"{label}={_quote(value)}"


def ne(label: str, value: str) -> str:
    """Matcher ``label!="value"``."""
    return f"{label}!={_quote(value)}"


def regex(label: str, pattern: str) -> str:
    """Matcher ``label=~"pattern"``."""
    return f"{label}=~{_quote(pattern)}"


def not_regex(label: str, pattern: str) -> str:
    """Matcher ``label!~"pattern"``."""
    return f"{label}!~{_quote(pattern)}"


def one_of(label: str, values: Iterable[str]) -> str:
    """Matcher selecting any of the given literal values."""
    return regex(label, "|".join(values))


def sel(metric: str, matchers: Iterable[str]) -> str:
    """Instant vector selector ``metric{matchers}``."""
    return f"{metric}{{{', '.join(matchers)}}}"


def rate(selector: str, window: str) -> str:
    """``rate(selector[window])``."""
    return f"rate({selector}[{window}])"


def increase(selector: str, window: str) -> str:
    """``increase(selector[window])``."""
    return f"increase({selector}[{window}])"


def agg(op: str, labels: Iterable[str], expr: str) -> str:
    """Aggregation ``op by (labels) (expr)``; no labels gives ``op (expr)``."""
    labels = tuple(labels)
    clause = f" by ({', '.join(labels)})" if labels else ""
    return f"{op}{clause} ({expr})"


def on(labels: Iterable[str]) -> str:
    """Vector matching clause ``on (labels)``."""
    return f"on ({', '.join(labels)})"


def quantile(q: float, buckets: str, labels: Iterable[str], window: str) -> str:
    """``histogram_quantile`` of a bucket series' rate, keeping ``labels`` (``le`` is added)."""
    return f"histogram_quantile({q:g}, {agg('sum', (*labels, L.LE), rate(buckets, window))})"


def ratio_or_zero(part: str, whole: str) -> str:
    """``part / whole`` that reads 0 instead of "no data" when ``part`` has no series (nothing happened yet)."""
    return f"({part} or {whole} * 0) / {whole}"

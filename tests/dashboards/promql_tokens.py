"""A small PromQL tokenizer that finds the metric names, labels, functions and ranges an expression uses.

Not a parser: it knows just enough PromQL (and Grafana's ``label_values`` and ``$variables``) to say which names an
expression depends on, so that tests can check them against the SDK's names module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|s|m|h|d|w|y)*|0[xX][0-9a-fA-F]+)
  | (?P<ident>[a-zA-Z_][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^=<>,(){}\[\]@:])
    """,
    re.VERBOSE,
)

GROUPING = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"}) | GROUPING
AGGREGATIONS = frozenset(
    {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
)

#: PromQL functions and aggregations (Prometheus 2.42), plus Grafana's variable-query helpers.
FUNCTIONS = frozenset(
    """
    abs absent absent_over_time acos acosh asin asinh atan atanh avg avg_over_time bottomk ceil changes clamp clamp_max
    clamp_min count count_over_time count_values cos cosh day_of_month day_of_week day_of_year days_in_month deg delta
    deriv end exp floor group histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10 log2 max
    max_over_time min min_over_time minute month pi predict_linear present_over_time quantile quantile_over_time rad
    rate resets round scalar sgn sin sinh sort sort_desc sqrt start stddev stddev_over_time stdvar stdvar_over_time sum
    sum_over_time tan tanh time timestamp topk vector year
    label_values label_names metrics query_result
    """.split()  # noqa: SIM905 (a word list reads better than 90 quoted strings)
)

#: Function arguments (by position) that are label names written as strings.
_LABEL_STRING_ARGS = {"label_replace": {1, 3}, "label_join": {1, 3, 4, 5, 6, 7, 8, 9}, "count_values": {0}}


@dataclass
class Names:
    """What an expression refers to."""

    metrics: set[str] = field(default_factory=set)
    labels: set[str] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    #: ``(innermost enclosing function or "", text between the brackets)`` for each range or subquery.
    ranges: list[tuple[str, str]] = field(default_factory=list)
    #: ``(keyword, labels)`` for each by / without / on / ignoring / group_left / group_right clause.
    groupings: list[tuple[str, frozenset[str]]] = field(default_factory=list)


@dataclass
class _Frame:
    kind: str  # "(", "{" or "["
    func: str = ""
    grouping: bool = False
    arg: int = 0
    start: int = 0


def tokenize(expr: str) -> list[tuple[str, str, int]]:
    """``(kind, text, offset)`` tokens of ``expr`` without whitespace and comments; raises on an unknown character."""
    tokens = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot tokenize {expr[pos : pos + 20]!r} at {pos} in {expr!r}")
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append((kind, m.group(), pos))
        pos = m.end()
    return tokens


def _ident(names: Names, tokens: list[tuple[str, str, int]], i: int, stack: list[_Frame]) -> None:
    text = tokens[i][1]
    nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
    top = stack[-1] if stack else None
    in_braces = top is not None and top.kind == "{"
    in_grouping = top is not None and top.kind == "(" and top.grouping
    # label_values(label) or label_values(selector, label)
    label_values_label = (
        top is not None and top.func == "label_values" and nxt not in ("{", "[") and (top.arg > 0 or nxt == ")")
    )
    if in_braces or in_grouping or label_values_label:
        if text != "__name__":
            names.labels.add(text)
    elif (nxt == "(" and text not in KEYWORDS) or (text in AGGREGATIONS and nxt in ("by", "without")):
        names.functions.add(text)
    elif text.lower() not in KEYWORDS:
        names.metrics.add(text)


def extract(expr: str) -> Names:
    """The metric names, labels, functions and ranges used by a PromQL expression (or a Grafana variable query)."""
    names = Names()
    tokens = tokenize(expr)
    stack: list[_Frame] = []
    pending_func, pending_grouping = "", False
    for i, (kind, text, offset) in enumerate(tokens):
        top = stack[-1] if stack else None
        if kind == "ident":
            _ident(names, tokens, i, stack)
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            pending_func = text if nxt == "(" else ""  # for a grouping clause: the keyword
            pending_grouping = text in GROUPING and nxt == "("
            continue
        if kind == "string" and top and top.kind == "{":
            label_index = i - 2
            if tokens[label_index][1] == "__name__" and tokens[i - 1][1] == "=":
                names.metrics.add(text[1:-1])
        elif kind == "string" and top and top.kind == "(" and top.arg in _LABEL_STRING_ARGS.get(top.func, ()):
            names.labels.add(text[1:-1])
        elif text in ("(", "{", "["):
            stack.append(_Frame(text, pending_func if text == "(" else "", pending_grouping, 0, offset + 1))
        elif text in (")", "}", "]"):
            if not stack or {"(": ")", "{": "}", "[": "]"}[stack[-1].kind] != text:
                raise ValueError(f"unbalanced {text!r} at {offset} in {expr!r}")
            frame = stack.pop()
            if frame.grouping:
                inside = tokenize(expr[frame.start : offset])
                names.groupings.append((frame.func, frozenset(t for k, t, _ in inside if k == "ident")))
            if frame.kind == "[":
                func = next((f.func for f in reversed(stack) if f.kind == "(" and f.func), "")
                names.ranges.append((func, expr[frame.start : offset].strip()))
        elif text == "," and top:
            top.arg += 1
        pending_func, pending_grouping = "", False
    if stack:
        raise ValueError(f"unclosed {stack[-1].kind!r} in {expr!r}")
    return names


_TEMPLATE_LABEL = re.compile(r"\$labels\.(\w+)")
_LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def template_labels(text: str) -> set[str]:
    """Labels an alert annotation template reads (``{{ $labels.x }}``)."""
    return set(_TEMPLATE_LABEL.findall(text))


def legend_labels(text: str) -> set[str]:
    """Labels a Grafana legend format shows (``{{x}}``)."""
    return set(_LEGEND_LABEL.findall(text))

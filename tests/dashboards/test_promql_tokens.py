"""The PromQL tokenizer the name checks rely on: it must find every name, and catch one that is made up."""

from __future__ import annotations

import pytest
from artifacts import unknown_names
from promql_tokens import extract, legend_labels, template_labels, tokenize


def test_metrics_before_braces_and_brackets_and_bare() -> None:
    found = extract('rate(a_total{x="1"}[5m]) / b_count[1m] + c * on (instance) d')
    assert found.metrics == {"a_total", "b_count", "c", "d"}
    assert found.functions == {"rate"}


def test_labels_in_matchers_and_grouping_clauses() -> None:
    found = extract('sum by (job, le) (m{a="x", b!="", c=~"y|z", d!~"w"}) * ignoring (e) group_left (f) n')
    assert found.labels == {"job", "le", "a", "b", "c", "d", "e", "f"}
    assert found.metrics == {"m", "n"}
    assert found.functions == {"sum"}
    assert ("by", frozenset({"job", "le"})) in found.groupings


def test_aggregation_with_trailing_clause_is_not_a_metric() -> None:
    found = extract("sum(rate(m[5m])) by (job) or count without (instance) (n)")
    assert found.metrics == {"m", "n"}
    assert found.labels == {"job", "instance"}
    assert found.functions == {"sum", "rate", "count"}


def test_strings_keywords_numbers_and_offsets_are_not_names() -> None:
    found = extract('m{a="by (x) {y} z[5m]"} offset 5m > bool 0.5e3 and n unless o or Inf > NaN')
    assert found.metrics == {"m", "n", "o"}
    assert found.labels == {"a"}


def test_grafana_variables_and_ranges() -> None:
    found = extract('increase(m{job=~"$job", pool=~"${client}"}[$__rate_interval]) + max_over_time(n[5m:30s])')
    assert found.ranges == [("increase", "$__rate_interval"), ("max_over_time", "5m:30s")]
    assert found.labels == {"job", "pool"}


def test_name_matcher_and_label_string_arguments() -> None:
    found = extract('label_replace({__name__="m", a="1"}, "dst", "$1", "src", "(.*)")')
    assert found.metrics == {"m"}
    assert found.labels == {"a", "dst", "src"}


@pytest.mark.parametrize(
    ("query", "metrics", "labels"),
    [
        ("label_values(job)", set(), {"job"}),
        ("label_values(m, job)", {"m"}, {"job"}),
        ('label_values(m{job=~"$job"}, pool)', {"m"}, {"job", "pool"}),
    ],
)
def test_grafana_label_values(query: str, metrics: set[str], labels: set[str]) -> None:
    found = extract(query)
    assert (found.metrics, found.labels) == (metrics, labels)


def test_unbalanced_and_untokenizable_expressions_fail() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        extract("sum(m))")
    with pytest.raises(ValueError, match="unclosed"):
        extract("sum(m{a='1'}")
    with pytest.raises(ValueError, match="cannot tokenize"):
        tokenize("m ~ n")


def test_made_up_names_are_caught() -> None:
    good = 'sum by (job) (rate(db_client_operation_duration_seconds_count{error_type!=""}[5m]))'
    assert unknown_names(good) == []
    assert unknown_names(good.replace("db_client_operation_duration_seconds_count", "db_client_made_up_total")) == [
        "metric 'db_client_made_up_total'"
    ]
    assert unknown_names(good + " / db_client_made_up") == ["metric 'db_client_made_up'"]
    assert unknown_names(good.replace("by (job)", "by (job, pod)")) == ["label 'pod'"]
    assert unknown_names(good.replace("error_type", "error_kind")) == ["label 'error_kind'"]
    assert unknown_names(good.replace("rate(", "rat(")) == ["function 'rat'"]


def test_template_and_legend_labels() -> None:
    assert template_labels("{{ $labels.job }} on {{ $labels.instance }}, {{ $value }}") == {"job", "instance"}
    assert legend_labels("p99 {{db_operation_name}} {{ instance }}") == {"db_operation_name", "instance"}

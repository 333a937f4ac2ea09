"""The Prometheus helper starts, fails loudly on a bad rule file, and cleans up after itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_server import PrometheusError, PrometheusServer

UNREACHABLE = "127.0.0.1:1"


def test_start_query_and_stop_cleans_up() -> None:
    server = PrometheusServer([UNREACHABLE], job="nothing").start()
    data_dir = server._dir
    assert data_dir is not None and data_dir.exists()
    assert server.query("vector(1)")[0]["value"][1] == "1"
    assert server.alerts() == []
    with pytest.raises(PrometheusError, match="bad_data"):
        server.query("rate(")

    server.stop()
    server.stop()  # idempotent

    assert not data_dir.exists()


def test_bad_rule_file_fails_start_with_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rules.yml"
    bad.write_text("groups:\n- name: x\n  rules:\n  - alert: A\n    expr: rate(\n")
    with pytest.raises(PrometheusError, match="unclosed left parenthesis"):
        PrometheusServer([UNREACHABLE], job="nothing", rule_files=[bad]).start()


def test_wait_for_is_bounded() -> None:
    assert PrometheusServer.wait_for(lambda: 42, timeout=1) == 42
    with pytest.raises(TimeoutError, match="never"):
        PrometheusServer.wait_for(lambda: [], timeout=0.3, interval=0.1, message="never")

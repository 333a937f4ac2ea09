"""The demo in its quick mode: it starts its own servers, prints a summary and draws the dashboard picture."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from example_runner import ROOT, example_env, run_example


@pytest.mark.slow
async def test_quick_demo_prints_the_summary_and_writes_the_picture(tmp_path: Path) -> None:
    output = tmp_path / "demo-output"
    result = await run_example("demo.py", "--quick", "--output", str(output), env=example_env(), timeout=150)
    text = result.output
    assert result.returncode == 0, text
    assert "[" in text and "REDIS DOWN |" in text and "recovery   |" in text  # visible progress
    summary = text[text.index("== Summary") :]
    assert "Daemon: exit code 0 after SIGTERM" in summary
    assert "lost 0, duplicated 0: OK" in summary
    assert "redis" in summary and "-> open x" in summary  # the breaker opened during the outage...
    assert "-> closed x" in summary  # ...and closed again
    breaker_alert = [line for line in summary.splitlines() if "TradingSharedCircuitBreakerOpen {client=redis}:" in line]
    assert breaker_alert, summary
    assert "firing at" in breaker_alert[0]  # Prometheus evaluated the repository's alert rule on the real metrics
    png = output / "dashboard.png"
    assert f"Dashboard picture: {png}" in summary
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width >= 1000 and height >= 800, (width, height)
    assert png.stat().st_size > 50_000  # panels with data, not an empty frame
    assert (output / "summary.txt").read_text().startswith("== Summary")
    # The slowest statements are named by their query summary (the daemon's candle upsert is a batch INSERT).
    statements = summary[summary.index("Slowest PostgreSQL statements") :].splitlines()[1:4]
    assert any("BATCH INSERT candles" in line and " p99 " in line for line in statements), summary
    # One tick's trace: the producer's send span, then the consumer's process span linked to it with the upsert
    # inside, read from the spans the daemon exported.
    trace = summary[summary.index("One tick's trace, from producer to candle") :].splitlines()
    send = next(i for i, line in enumerate(trace) if " send market:ticks:" in line and "PRODUCER" in line)
    process = next(i for i, line in enumerate(trace) if " process market:ticks:" in line and "CONSUMER" in line)
    assert send < process and "linked to the send" in trace[process], summary
    assert any("`- BATCH INSERT candles" in line for line in trace[process:]), summary
    assert any("`- XACK market:ticks:" in line for line in trace[process:]), summary


def test_demo_script_sets_up_then_runs_the_demo() -> None:
    script = (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/setup.sh" in script
    assert ".venv/bin/python examples/demo.py" in script

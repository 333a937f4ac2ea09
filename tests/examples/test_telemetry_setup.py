"""examples/telemetry_setup.py: OTLP/HTTP from the standard OTEL_* variables, and a Prometheus endpoint."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from example_runner import ROOT, example_env, run_example


class _Collector(ThreadingHTTPServer):
    """Records the OTLP/HTTP requests it receives: ``(path, content type, body size)``."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, int]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append((self.path, self.headers.get("Content-Type", ""), len(body)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[_Collector]:
    server = _Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


async def test_otlp_from_env_and_prometheus_endpoint(pg_dsn: str, redis_url: str, collector: _Collector) -> None:
    env = example_env(
        POSTGRES_DSN=pg_dsn,
        REDIS_URL=redis_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}",
        OTEL_SERVICE_NAME="telemetry-check",
    )
    result = await run_example("telemetry_setup.py", env=env)
    assert result.returncode == 0, result.output
    # The SDK was imported AFTER the providers were set: its metrics must still be there.
    for series in ("db_client_operation_duration_seconds_bucket", "db_client_connection_create_time_seconds_count"):
        assert f"  {series}" in result.output, result.output
    assert "OTLP traces sent / OTLP metrics sent" in result.output
    paths = {path for path, _, _ in collector.requests}
    assert {"/v1/traces", "/v1/metrics"} <= paths, collector.requests
    assert all(ctype == "application/x-protobuf" and size > 0 for _, ctype, size in collector.requests)


async def test_without_an_endpoint_only_prometheus_is_on(pg_dsn: str, redis_url: str) -> None:
    result = await run_example("telemetry_setup.py", env=example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url))
    assert result.returncode == 0, result.output
    assert "OTLP traces off, OTLP metrics off, Prometheus http://127.0.0.1:" in result.output
    assert "  db_client_operation_duration_seconds_count" in result.output


async def test_otel_traces_exporter_none_turns_traces_off(pg_dsn: str, redis_url: str, collector: _Collector) -> None:
    env = example_env(
        POSTGRES_DSN=pg_dsn,
        REDIS_URL=redis_url,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_port}",
        OTEL_TRACES_EXPORTER="none",
    )
    result = await run_example("telemetry_setup.py", env=env)
    assert result.returncode == 0, result.output
    assert {path for path, _, _ in collector.requests} == {"/v1/metrics"}


async def test_refuses_to_run_beside_redis_py_own_metrics() -> None:
    code = (
        "import sys; sys.path.insert(0, 'examples')\n"
        "from redis.observability.config import OTelConfig\n"
        "from redis.observability.providers import get_observability_instance\n"
        "get_observability_instance().init(OTelConfig())\n"
        "from telemetry_setup import setup_telemetry\n"
        "try:\n    setup_telemetry('x')\nexcept RuntimeError as exc:\n    print('refused:', exc)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        env=example_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert "refused: redis-py's own OpenTelemetry metrics are enabled" in out.decode(), out.decode()

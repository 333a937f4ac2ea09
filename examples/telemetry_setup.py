"""OpenTelemetry set-up for a service using trading-shared: OTLP from the standard OTEL_* variables, plus Prometheus.

The SDK itself only depends on ``opentelemetry-api``: it reports through whatever providers the application sets.
This module is one way for an application to set them (``pip install trading-shared[otel]``)::

    from telemetry_setup import setup_telemetry

    telemetry = setup_telemetry("market-data", prometheus_port=9464)   # before or after creating clients
    ...
    telemetry.shutdown()                                                # flushes what is still buffered

* Traces and metrics go to an OTLP/HTTP collector when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or the per-signal
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT``) is set. The exporters read the
  other standard variables themselves: ``OTEL_EXPORTER_OTLP_HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``,
  ``OTEL_METRIC_EXPORT_INTERVAL``, ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``, ``OTEL_SERVICE_NAME``,
  ``OTEL_RESOURCE_ATTRIBUTES``. ``OTEL_TRACES_EXPORTER=none`` / ``OTEL_METRICS_EXPORTER=none`` turn a signal off;
  ``OTEL_SDK_DISABLED=true`` turns everything off.
* Metrics are also served for Prometheus to scrape on ``http://<host>:<port>/metrics`` when ``prometheus_port``
  is given (0 picks a free port; ``Telemetry.prometheus_port`` says which).
* Spans are also written to ``spans_file``, one JSON object per line, when it is given (the demo reads it back to
  print one tick's trace; a file is no tracing backend).

Never enable redis-py's own OpenTelemetry metrics (``redis.observability``) in the same process: they use the same
metric names as the SDK (``db.client.operation.duration``, ``db.client.connection.count``) and Prometheus rejects
the duplicate HELP/TYPE blocks. :func:`setup_telemetry` refuses to run when they are on.

Run it directly for a self-check against the servers in POSTGRES_* / REDIS_*: it sets everything up, makes a few
calls, prints the SDK's series from its own /metrics endpoint, flushes and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

_log = logging.getLogger("telemetry_setup")


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` configured; call :meth:`shutdown` before the process exits."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    prometheus_port: int | None = None
    otlp_traces: bool = False
    otlp_metrics: bool = False
    _server: Any = field(default=None, repr=False)

    @property
    def metrics_url(self) -> str | None:
        """The Prometheus scrape URL, when a Prometheus endpoint was started."""
        return None if self.prometheus_port is None else f"http://127.0.0.1:{self.prometheus_port}/metrics"

    def shutdown(self) -> None:
        """Flush and stop the exporters and the Prometheus endpoint. Idempotent."""
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
            self.tracer_provider = None
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
            self.meter_provider = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def _otlp_wanted(signal: str) -> bool:
    exporter = _env(f"OTEL_{signal.upper()}_EXPORTER").lower()
    if exporter == "none":
        return False
    return bool(_env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT"))


def _refuse_redis_py_metrics() -> None:
    try:
        from redis.observability.providers import get_observability_instance
    except ImportError:  # redis-py < 8 has none
        return
    if get_observability_instance().is_enabled():
        raise RuntimeError(
            "redis-py's own OpenTelemetry metrics are enabled: they duplicate the SDK's metric names and "
            "Prometheus would reject the scrape; do not call redis.observability's init() in this process"
        )


def setup_telemetry(
    service_name: str,
    *,
    prometheus_port: int | None = None,
    prometheus_host: str = "127.0.0.1",
    set_global: bool = True,
    spans_file: Path | None = None,
) -> Telemetry:
    """Configure tracing and metrics from OTEL_* variables, optionally with a Prometheus endpoint.

    ``service_name`` is used unless ``OTEL_SERVICE_NAME`` (or ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES``)
    says otherwise. With ``set_global`` (default) the providers become OpenTelemetry's global ones, which the SDK's
    clients use; otherwise pass ``tracer_provider=`` / ``meter_provider=`` to each client.
    """
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        _log.info("OTEL_SDK_DISABLED=true: telemetry is not configured")
        return Telemetry(None, None)
    _refuse_redis_py_metrics()
    attributes: dict[str, str] = {}
    if not _env("OTEL_SERVICE_NAME") and "service.name=" not in _env("OTEL_RESOURCE_ATTRIBUTES"):
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)

    tracer_provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    otlp_traces = _otlp_wanted("traces")
    if otlp_traces:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if spans_file is not None:
        out = spans_file.open("a", encoding="utf-8")  # flushed after each export, closed at exit
        exporter = ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))

    readers: list[MetricReader] = []
    otlp_metrics = _otlp_wanted("metrics")
    if otlp_metrics:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))  # OTEL_METRIC_EXPORT_INTERVAL
    server = None
    port = None
    if prometheus_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        readers.append(PrometheusMetricReader())
        server, _thread = start_http_server(prometheus_port, addr=prometheus_host)
        port = int(server.server_port)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)

    if set_global:
        trace.set_tracer_provider(tracer_provider)
        metrics.set_meter_provider(meter_provider)
    _log.info(
        "telemetry: OTLP traces %s, OTLP metrics %s, Prometheus %s",
        "on" if otlp_traces else "off",
        "on" if otlp_metrics else "off",
        f"http://{prometheus_host}:{port}/metrics" if port is not None else "off",
    )
    return Telemetry(tracer_provider, meter_provider, port, otlp_traces, otlp_metrics, server)


# --- self-check -------------------------------------------------------------------------------------------------------
async def _exercise() -> None:
    from trading_shared import PostgresClient, RedisClient, Resources

    async with Resources(PostgresClient(), RedisClient()) as (pg, redis):
        for i in range(5):
            await pg.fetchval("SELECT $1::int", i)
            await redis.set("telemetry-setup:check", str(i))
            await redis.get("telemetry-setup:check")
        await redis.delete("telemetry-setup:check")


def main(argv: list[str] | None = None) -> int:
    """Set up telemetry, make a few calls through the SDK, show the scraped series, flush, exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus-port", type=int, default=0, help="port for /metrics (0: any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    telemetry = setup_telemetry("telemetry-setup-check", prometheus_port=args.prometheus_port)
    try:
        asyncio.run(_exercise())
        if telemetry.metrics_url is not None:
            with urllib.request.urlopen(telemetry.metrics_url, timeout=5) as response:
                text = response.read().decode()
            series = sorted({line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1].isalpha()})
            print(f"{telemetry.metrics_url} serves {len(series)} series, e.g.:")
            for name in series:
                if name.startswith(("db_client", "trading_shared")):
                    print("  " + name)
    finally:
        telemetry.shutdown()
    print(
        "telemetry: flushed; OTLP traces",
        "sent" if telemetry.otlp_traces else "off",
        "/ OTLP metrics",
        "sent" if telemetry.otlp_metrics else "off",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

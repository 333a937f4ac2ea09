"""OpenTelemetry SDK set-ups for the benchmarks, passed to clients explicitly (the global providers stay unset).

* :func:`configured`: every span sampled, exported through a ``BatchSpanProcessor`` (default queue and batch sizes)
  to an exporter that drops spans in memory; metrics through a ``PeriodicExportingMetricReader`` to an exporter
  that drops them. The export threads run during the measurements, as they would in a service.
* Variants "without an OpenTelemetry SDK" get no providers: the API's no-op proxies, as in an app that never
  configured OpenTelemetry. Nothing in this process ever sets the global providers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult


class DropSpans(SpanExporter):
    """Counts and drops spans (the cost of a real exporter's network I/O is not what is measured)."""

    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class DropMetrics(MetricExporter):
    """Drops metric batches after the reader has collected them (collection and aggregation are measured)."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality={}, preferred_aggregation={})
        self.exports = 0

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.exports += 1
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


@dataclass
class Otel:
    """A configured tracer provider and meter provider."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    spans: DropSpans
    metrics: DropMetrics

    def providers(self) -> dict[str, Any]:
        """Keyword arguments for an SDK client."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def flush(self) -> None:
        """Export what is queued (called between timed batches so one variant's backlog is not charged to the next)."""
        self.tracer_provider.force_flush()

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def configured(metric_interval_s: float = 5.0) -> Otel:
    """Sampled spans through a batch processor, metrics through a periodic reader; both exporters drop."""
    spans = DropSpans()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(spans))
    dropped = DropMetrics()
    reader = PeriodicExportingMetricReader(dropped, export_interval_millis=metric_interval_s * 1000)
    meter_provider = MeterProvider(metric_readers=[reader])
    return Otel(tracer_provider, meter_provider, spans, dropped)

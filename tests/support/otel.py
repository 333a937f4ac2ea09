"""In-memory OpenTelemetry providers for asserting spans and metrics, passed to clients explicitly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trading_shared.telemetry.names import METHOD


@dataclass
class Otel:
    """A tracer provider and a meter provider that keep everything in memory."""

    spans_exporter: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def __post_init__(self) -> None:
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans_exporter))
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def providers(self) -> dict[str, Any]:
        """Keyword arguments for a client constructor."""
        return {"tracer_provider": self.tracer_provider, "meter_provider": self.meter_provider}

    def spans(self, name_prefix: str = "") -> list[ReadableSpan]:
        """Finished spans whose name starts with ``name_prefix``."""
        return [s for s in self.spans_exporter.get_finished_spans() if s.name.startswith(name_prefix)]

    def method_spans(self, method: str) -> list[ReadableSpan]:
        """Finished spans of the SDK method ``method`` (``fetchval``...): PostgreSQL spans are named by statement."""
        return [s for s in self.spans_exporter.get_finished_spans() if (s.attributes or {}).get(METHOD) == method]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """``(attributes, value)`` of every data point of ``metric`` (histograms give ``(attrs, count)``)."""
        data = self.reader.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name != metric:
                        continue
                    for p in m.data.data_points:
                        value = getattr(p, "value", None)
                        found.append((dict(p.attributes), value if value is not None else p.count))
        return found

    def everything_as_text(self) -> str:
        """All spans (attributes, events) and metric points as one string, for 'never appears' checks."""
        parts = [s.to_json() for s in self.spans_exporter.get_finished_spans()]
        data = self.reader.get_metrics_data()
        if data is not None:
            parts.append(data.to_json())
        return "\n".join(parts)

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()

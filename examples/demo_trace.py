"""One tick's way through the platform, from the spans the daemon wrote to a file: the demo prints it.

The producer's ``send`` span (``xadd_bulk``) wrote its trace context into each entry; the consumer's ``process``
span for the batch that held the entry links back to it, and the candle upsert and the acknowledgement run inside
that span. This module finds one such chain in a JSON-lines span file (one ``ReadableSpan.to_json()`` per line)
and renders it as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Span:
    """The parts of an exported span the printout uses."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str
    start: datetime
    end: datetime
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace_id, span_id) of each linked span

    @property
    def millis(self) -> float:
        """Duration in milliseconds."""
        return (self.end - self.start).total_seconds() * 1000


def _span(raw: dict[str, Any]) -> Span:
    context = raw["context"]
    return Span(
        trace_id=context["trace_id"],
        span_id=context["span_id"],
        parent_id=raw.get("parent_id"),
        name=raw["name"],
        kind=str(raw.get("kind", "")).removeprefix("SpanKind."),
        start=datetime.fromisoformat(raw["start_time"].replace("Z", "+00:00")),
        end=datetime.fromisoformat(raw["end_time"].replace("Z", "+00:00")),
        attributes=raw.get("attributes") or {},
        links=tuple((link["context"]["trace_id"], link["context"]["span_id"]) for link in raw.get("links") or []),
    )


def read_spans(path: Path) -> list[Span]:
    """Every span in the file (lines that do not parse, e.g. one cut by a kill, are skipped)."""
    spans = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            spans.append(_span(json.loads(line)))
        except (ValueError, KeyError, TypeError):
            continue
    return spans


@dataclass(frozen=True)
class TickTrace:
    """A producer span, what it caused (its children), and the consumer spans linked to it."""

    send: Span
    send_children: list[Span]
    reads: list[Span]
    process: Span
    process_children: list[Span]


def find_tick_trace(spans: Iterable[Span], upsert_summary: str = "INSERT candles") -> TickTrace | None:
    """The first ``process`` span whose children include the candle upsert and whose links reach a ``send`` span
    in the file, with that send span; None when the file holds no such chain."""
    spans = list(spans)
    by_id = {s.span_id: s for s in spans}
    children: dict[str, list[Span]] = {}
    for s in spans:
        if s.parent_id:
            children.setdefault(s.parent_id, []).append(s)
    for process in sorted(spans, key=lambda s: s.start):
        if process.kind != "CONSUMER" or not process.name.startswith("process"):
            continue
        kids = sorted(children.get(process.span_id, []), key=lambda s: s.start)
        if not any(upsert_summary in k.name for k in kids):  # "BATCH INSERT candles" for several rows
            continue
        for _, span_id in process.links:
            send = by_id.get(span_id)
            if send is None or send.kind != "PRODUCER":
                continue
            reads = [s for s in spans if s.kind == "CLIENT" and (send.trace_id, send.span_id) in s.links]
            send_kids = sorted(children.get(send.span_id, []), key=lambda s: s.start)
            return TickTrace(send, send_kids, reads, process, kids)
    return None


def _describe(span: Span) -> str:
    a = span.attributes
    extra = []
    if "messaging.batch.message_count" in a:
        extra.append(f"{a['messaging.batch.message_count']} messages")
    if "db.operation.batch.size" in a:
        extra.append(f"batch of {a['db.operation.batch.size']}")
    if span.links:
        extra.append(f"links to {len(span.links)} producer span(s)")
    return f"{span.name:<44} {span.kind:<8} {span.millis:7.2f} ms" + (f"  ({', '.join(extra)})" if extra else "")


def render(trace: TickTrace, source: Path) -> list[str]:
    """The chain as indented text lines."""
    t0 = trace.send.start

    def at(span: Span) -> str:
        return f"+{(span.start - t0).total_seconds() * 1000:8.1f} ms"

    lines = [f"One tick's trace, from producer to candle (spans the daemon wrote to {source}):"]
    lines.append(f"  trace {trace.send.trace_id[2:10]}  {at(trace.send)}  {_describe(trace.send)}")
    for kid in trace.send_children:
        lines.append(f"                   {at(kid)}    `- {_describe(kid)}")
    for read in trace.reads[:1]:
        lines.append(f"  trace {read.trace_id[2:10]}  {at(read)}  {_describe(read)}  <- linked to the send")
    process = trace.process
    lines.append(f"  trace {process.trace_id[2:10]}  {at(process)}  {_describe(process)}  <- linked to the send")
    for kid in trace.process_children:
        lines.append(f"                   {at(kid)}    `- {_describe(kid)}")
    return lines

"""PostgreSQL telemetry named by the statement: ``db.query.summary`` as span name and metric attribute.

Each call is described by a :class:`SqlOperation`, made once per (method, statement text) and cached, so a repeated
statement costs two dictionary look-ups. Its span carries the summary (also the span name), the SQL operation, the
table when there is exactly one, the function of ``SELECT fn()`` / ``CALL``, the SDK method and, unless
``query_text`` is off, the statement with every literal replaced by ``?`` and comments removed (never a parameter).
Its duration point carries ``db.operation.name`` and ``db.query.summary``; a client lets at most ``summary_cap``
distinct summaries into its metrics, later ones become ``_OTHER`` and are counted by
``trading_shared.db.query_summary.overflow``. Retries and breaker rejections carry the same ``db.operation.name``
as the duration point.

Batches follow the OpenTelemetry database conventions: ``executemany`` with two or more argument tuples is
``BATCH {operation}`` / ``BATCH {summary}`` with ``db.operation.batch.size``; one tuple is a single operation. Several
statements sent by one call (a multi-statement text, ``copy_upsert``'s three) are ``db.operation.name=BATCH`` with
their count, summarised by their operations and targets in order. A COPY of many rows is one operation.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import Span, SpanKind

from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import Instruments
from ..telemetry.query_summary import OVERFLOW, CardinalityCap, QueryNames, QuerySummaries, summarise

_log = logging.getLogger("trading_shared.telemetry.client")

#: Operations a client keeps (all methods together), and the characters their statement texts may hold in all.
MAX_CACHED_STATEMENTS = 1000
MAX_CACHED_CHARS = 1_000_000
BATCH = "BATCH"


class SqlOperation(str):
    """One kind of PostgreSQL call, as the call pipeline carries it. Its string value is the query summary (what
    errors and breaker messages name); the names telemetry records ride along, with attribute dicts built once per
    server the client talks to. ``readonly`` caches whether the statement only reads (None: not computed yet)."""

    method: str
    summary: str
    operation: str | None
    fallback: str | None
    collection: str | None
    procedure: str | None
    text: str | None
    batch_size: int | None
    readonly: bool | None
    base: dict[str, str | int] | None
    span_attrs: dict[str, Any]
    metric_attrs: dict[str, str | int]
    metric_operation: str
    overflowed: bool

    def __new__(
        cls,
        *,
        method: str,
        summary: str,
        operation: str | None,
        fallback: str | None = None,
        collection: str | None = None,
        procedure: str | None = None,
        text: str | None = None,
        batch_size: int | None = None,
    ) -> SqlOperation:
        """``fallback`` is the ``db.operation.name`` metrics use once the summary overflowed (``operation`` may be a
        function or a caller's name: as unbounded as the summary)."""
        self = super().__new__(cls, summary)
        self.method = method
        self.summary = summary
        self.operation = operation
        self.fallback = fallback if fallback is not None else operation
        self.collection = collection
        self.procedure = procedure
        self.text = text
        self.batch_size = batch_size
        self.readonly = None
        self.base = None
        return self

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # Errors keep the operation they failed in; pickled, it is the summary as a plain string.
        return str, (str(self),)


def statement_operation(method: str, names_: QueryNames, summary: str | None, batch_size: int | None) -> SqlOperation:
    """The operation of ``method`` sending one statement text (``batch_size``: its argument tuples, None for one)."""
    operation, fallback, own = names_.operation, names_.keyword, names_.summary
    if names_.procedure is None:
        fallback = operation
    if names_.statements > 1:  # several statements in one call: a batch, summarised by its operations and targets
        operation = fallback = BATCH
        batch_size = names_.statements
    elif batch_size is not None:  # one statement, several argument tuples: BATCH and the one statement's names
        own = f"{BATCH} {own}"
        operation = f"{BATCH} {operation}" if operation is not None else BATCH
        fallback = f"{BATCH} {fallback}" if fallback is not None else BATCH
    return SqlOperation(
        method=method,
        summary=summary or own,
        operation=operation,
        fallback=fallback if fallback is not None else method,
        collection=names_.collection,
        procedure=names_.procedure,
        text=names_.text,
        batch_size=batch_size,
    )


class PostgresTelemetry(ClientTelemetry):
    """:class:`ClientTelemetry` for a PostgreSQL client: calls are :class:`SqlOperation` (``connect`` stays a plain
    operation name)."""

    def __init__(self, *, query_text: bool, summary_cap: int, **kwargs: Any) -> None:
        super().__init__(system=names.SYSTEM_POSTGRESQL, **kwargs)
        self._query_text = query_text
        self._summaries = QuerySummaries(MAX_CACHED_STATEMENTS, MAX_CACHED_CHARS)
        self._cap = CardinalityCap(summary_cap)
        self._ops: dict[str, dict[str, SqlOperation]] = {}
        self._named: dict[tuple[str, ...], SqlOperation] = {}
        self._cached = 0
        self._chars_left = MAX_CACHED_CHARS

    # -- describing calls --------------------------------------------------------------------------------------------
    def statement(self, method: str, query: str, summary: str | None = None) -> SqlOperation:
        """The operation of ``method`` running ``query`` once (a look-up after the first call)."""
        by_query = self._ops.get(method)
        if by_query is not None and not summary:
            found = by_query.get(query)
            if found is not None:
                return found
        return self._new_statement(method, query, summary)

    def batch(self, method: str, query: str, count: int, summary: str | None = None) -> SqlOperation:
        """The operation of ``method`` running ``query`` for ``count`` argument tuples (one tuple: not a batch)."""
        if count == 1:
            return self.statement(method, query, summary)
        return statement_operation(method, self._summaries(query), summary, count)

    def statements(self, method: str, texts: tuple[str, ...], summary: str | None = None) -> SqlOperation:
        """The operation of ``method`` sending the statements ``texts`` in turn (one call, e.g. ``copy_upsert``)."""
        key = (method, summary or "", *texts)
        found = self._named.get(key)
        if found is None:
            found = statement_operation(method, summarise("; ".join(texts)), summary, None)
            self._keep(key, found)
        return found

    def named(
        self, method: str, summary: str, operation: str, *, collection: str | None = None, fallback: str | None = None
    ) -> SqlOperation:
        """An operation whose SQL the SDK does not parse: a caller's ``run``/``transaction``, a COPY of rows."""
        key = (method, summary, operation, collection or "")
        found = self._named.get(key)
        if found is None:
            found = SqlOperation(
                method=method, summary=summary, operation=operation, fallback=fallback or method, collection=collection
            )
            self._keep(key, found)
        return found

    def _new_statement(self, method: str, query: str, summary: str | None) -> SqlOperation:
        if summary:
            return self.statements(method, (query,), summary)
        op = statement_operation(method, self._summaries(query), None, None)
        if self._cached < MAX_CACHED_STATEMENTS and len(query) <= self._chars_left:
            self._cached += 1
            self._chars_left -= len(query)
            self._ops.setdefault(method, {})[query] = op
        return op

    def _keep(self, key: tuple[str, ...], op: SqlOperation) -> None:
        size = sum(len(k) for k in key)
        if self._cached < MAX_CACHED_STATEMENTS and size <= self._chars_left:
            self._cached += 1
            self._chars_left -= size
            self._named[key] = op

    def _prepare(self, op: SqlOperation) -> None:
        """Build ``op``'s span and metric attributes for the current server (and pass its summary by the cap)."""
        base = self._base
        span: dict[str, Any] = {**base, names.DB_QUERY_SUMMARY: op.summary, names.METHOD: op.method}
        if op.operation is not None:
            span[names.DB_OPERATION_NAME] = op.operation
        if op.collection is not None:
            span[names.DB_COLLECTION_NAME] = op.collection
        if op.procedure is not None:
            span[names.DB_STORED_PROCEDURE_NAME] = op.procedure
        if op.batch_size is not None:
            span[names.DB_OPERATION_BATCH_SIZE] = op.batch_size
        if self._query_text and op.text:
            span[names.DB_QUERY_TEXT] = op.text
        capped = self._cap(op.summary)
        op.overflowed = capped is OVERFLOW
        operation = op.fallback if op.overflowed else op.operation
        op.metric_operation = operation if operation is not None else op.method
        op.metric_attrs = {**base, names.DB_OPERATION_NAME: op.metric_operation, names.DB_QUERY_SUMMARY: capped}
        op.span_attrs = span
        op.base = base

    # -- ClientTelemetry, for SqlOperation ---------------------------------------------------------------------------
    def start(self, operation: str) -> Span | None:
        """Start the CLIENT span of one call, named by its query summary."""
        if type(operation) is not SqlOperation:
            return super().start(operation)
        try:
            tracer = self._tracer or self.tracer()
            if tracer is None:
                return None
            if operation.base is not self._base:
                self._prepare(operation)
            return tracer.start_span(operation.summary, kind=SpanKind.CLIENT, attributes=operation.span_attrs)
        except Exception:
            _log.debug("span start failed", exc_info=True)
            return None

    def attributes(self, operation: str) -> dict[str, str | int]:
        """The duration point's attributes of ``operation`` (cached; never mutate)."""
        if type(operation) is not SqlOperation:
            return super().attributes(operation)
        if operation.base is not self._base:
            self._prepare(operation)
        if operation.overflowed:
            self._add("summary_overflow", self.pool_attributes)
        return operation.metric_attrs

    def attempt_failed(
        self, span: Span | None, operation: str, *, attempt: int, error_type: str, fault: str, delay: float | None
    ) -> None:
        """As :meth:`ClientTelemetry.attempt_failed`; retries carry the duration point's ``db.operation.name``."""
        super().attempt_failed(
            span, self._metric_operation(operation), attempt=attempt, error_type=error_type, fault=fault, delay=delay
        )

    def breaker_rejected(self, operation: str) -> None:
        """Count a call the open breaker rejected, by the duration point's ``db.operation.name``."""
        super().breaker_rejected(self._metric_operation(operation))

    def _metric_operation(self, operation: str) -> str:
        if type(operation) is not SqlOperation:
            return operation
        if operation.base is not self._base:
            self._prepare(operation)
        return operation.metric_operation

    def instruments(self) -> Instruments | None:
        """As :meth:`ClientTelemetry.instruments`; the overflow counter is exported at 0 from the start."""
        fresh = self._instruments is None
        found = super().instruments()
        if fresh and found is not None:
            found.summary_overflow.add(0, self.pool_attributes)
        return found

"""PostgresClient: asyncpg behind the SDK's resilient, instrumented pipeline."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

import asyncpg
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from ..errors import DeadlineExceededError, ServiceUnavailableError
from ..resilience.breaker import CircuitBreaker
from ..resilience.deadline import CallSteps
from ..resilience.faults import PartlyApplied, RequestNotSent
from ..resilience.pipeline import CallPipeline
from ..settings import PostgresSettings
from ..telemetry.instruments import PoolStats
from . import connections
from .bulk import BulkMethods
from .classify import PostgresErrors, ReadOnlyServerError
from .legacy import LegacyMethods
from .pool import PoolGate, create_gate
from .query_telemetry import PostgresTelemetry, SqlOperation
from .statement_spans import end_statement_scope, statement_scope
from .transactions import Isolation, transaction_body
from .transactions import idempotent as idempotent_read

T = TypeVar("T")
_log = logging.getLogger(__name__)

_STATUS_COUNT = re.compile(r"(\d+)$")


class PostgresClient(BulkMethods, LegacyMethods):
    """An async PostgreSQL client: one pool, one circuit breaker, retries, spans and metrics for every call.

    Use it as ``async with PostgresClient(settings) as pg:`` (run-once tasks) or ``await pg.connect()`` /
    ``await pg.close()`` (daemons). ``connect()`` is an idempotent get-or-create that concurrent callers share; any
    call connects on demand. ``close()`` is idempotent and bounded; the client can be used again after it.

    Reads (``fetch``, ``fetchrow``, ``fetchval`` of a SELECT) are retried after a lost connection. Statements that
    write are re-sent only when the caller says they are idempotent (``idempotent=True``: keyed upserts,
    ``ON CONFLICT``); otherwise a failure after the request may have reached the server raises
    :class:`~trading_shared.errors.OutcomeUnknownError`. Transactions re-run as a whole on serialization failures
    and deadlocks, and after connection failures that happened before COMMIT was sent.

    Deployments (docs/postgres-pgbouncer.md, docs/postgres-failover.md): behind PgBouncer in transaction mode set
    ``pooler="transaction"``. With a multi-host DSN and ``target_session_attrs=read-write`` the client follows a
    failover: a write refused because the server turned read-only (SQLSTATE 25006 from a standby or a demoted
    primary) is known not to have been applied, so the pool is expired and the write re-sent to the new primary.
    With ``replica_dsn``, reads passed ``replica=True`` go to a replica through a second pool with its own breaker
    (:attr:`replica`): a failing replica never opens the primary's breaker.

    Telemetry names each call by its statement (docs/metrics.md#postgresql-query-summaries): the span is named by
    ``db.query.summary`` (``SELECT instruments``), computed once per distinct statement text. Where the SQL is
    generated, pass ``summary="load instruments"`` to name the call yourself (keep it low-cardinality).
    """

    def __init__(
        self,
        settings: PostgresSettings | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.settings = settings if settings is not None else PostgresSettings()
        host, port, database = self.settings.target()
        self._tracer_provider = tracer_provider
        self._telemetry = PostgresTelemetry(
            query_text=self.settings.query_text,
            summary_cap=self.settings.query_summary_cap,
            pool_name=self.settings.name,
            namespace=database,
            address=host,
            port=port,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self._errors = PostgresErrors.for_settings(self.settings.ssl, self.settings.resolved_dsn().get_secret_value())
        self.breaker = CircuitBreaker(self.settings.breaker, self.settings.name)
        self._pipeline = CallPipeline(
            retry=self.settings.retry,
            breaker=self.breaker,
            errors=self._errors,
            telemetry=self._telemetry,
            activate_span=self.settings.statement_spans,
        )
        self._gate: PoolGate | None = None
        self._lock = asyncio.Lock()
        self._writable = True  # False for the replica endpoint: a 25006 there is the caller's write, not a failover
        self._replica: PostgresClient | None = None
        if self.settings.replica_dsn is not None:
            replica_settings = self.settings.model_copy(
                update={"dsn": self.settings.replica_dsn, "replica_dsn": None, "name": f"{self.settings.name}-replica"}
            )
            self._replica = PostgresClient(
                replica_settings, tracer_provider=tracer_provider, meter_provider=meter_provider
            )
            self._replica._writable = False
        self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)

    def __repr__(self) -> str:
        host, port, database = self.settings.target()
        state = "connected" if self._gate is not None else "not connected"
        return f"<PostgresClient {self.settings.name!r} {host}:{port}/{database} {state}>"

    # -- lifecycle -----------------------------------------------------------------------------------------------------
    async def connect(self) -> Self:
        """Create the pool if there is none (concurrent callers share one). Fails fast on bad credentials."""
        if self._gate is None:
            async with self._lock:
                if self._gate is None:
                    self._gate = await self._pipeline.call("connect", self._create_gate, idempotent=True)
                    self._telemetry.observe(pool=self._pool_stats, breakers=self._breaker_states)
        return self

    async def close(self, timeout: float = 10.0) -> None:
        """Close the pool (and the replica's) within ``timeout`` seconds (then terminate). Idempotent."""
        async with self._lock:
            gate, self._gate = self._gate, None
            if gate is not None:
                await gate.close(timeout)
            self._pipeline.close()
            self._telemetry.close()
        if self._replica is not None:
            await self._replica.close(timeout)

    async def __aenter__(self) -> Self:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool | None:
        """The underlying asyncpg pool (None until connected). Calls made on it bypass retries and telemetry."""
        return self._gate.pool if self._gate is not None else None

    @property
    def replica(self) -> PostgresClient | None:
        """The client that serves ``replica=True`` reads (own pool, breaker, telemetry pool name), or None.

        It connects on its first read. Its breaker is :attr:`replica.breaker <breaker>`; writes sent through it are
        refused by the replica (25006) and raised as caller errors.
        """
        return self._replica

    # -- statements ----------------------------------------------------------------------------------------------------
    async def execute(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool = False,
        summary: str | None = None,
    ) -> int:
        """Run a statement; returns the number of rows it affected (0 for statements that report none).

        ``summary`` (every statement method takes it) names the call in telemetry instead of the summary computed
        from ``query``: for generated SQL. Keep it low-cardinality (a name, never a value).
        """
        op = self._telemetry.statement("execute", query, summary)
        status: str = await self._run(op, lambda c: c.execute(query, *args, timeout=timeout), idempotent)
        found = _STATUS_COUNT.search(status)
        return int(found.group(1)) if found else 0

    async def executemany(
        self,
        query: str,
        args: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool = False,
        summary: str | None = None,
    ) -> None:
        """Run a statement once per argument tuple, atomically (asyncpg runs it in one implicit transaction).

        Two or more tuples are a batch in telemetry (``BATCH INSERT ohlc``, ``db.operation.batch.size``).
        """
        rows = list(args)
        op = self._telemetry.batch("executemany", query, len(rows), summary)
        await self._run(op, lambda c: c.executemany(query, rows, timeout=timeout), idempotent)

    async def fetch(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        replica: bool = False,
        summary: str | None = None,
    ) -> list[asyncpg.Record]:
        """Run a query and return all rows. ``replica=True``: a replica may serve it (see :attr:`replica`)."""
        if replica and self._replica is not None:
            return await self._on_replica(
                lambda c: c.fetch(query, *args, timeout=timeout, idempotent=idempotent, summary=summary)
            )
        op = self._telemetry.statement("fetch", query, summary)
        result: list[asyncpg.Record] = await self._run(
            op, lambda c: c.fetch(query, *args, timeout=timeout), idempotent_read(op, query, idempotent)
        )
        return result

    async def fetchrow(
        self,
        query: str,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        replica: bool = False,
        summary: str | None = None,
    ) -> asyncpg.Record | None:
        """Run a query and return its first row, or None. ``replica=True``: a replica may serve it."""
        if replica and self._replica is not None:
            return await self._on_replica(
                lambda c: c.fetchrow(query, *args, timeout=timeout, idempotent=idempotent, summary=summary)
            )
        op = self._telemetry.statement("fetchrow", query, summary)
        result: asyncpg.Record | None = await self._run(
            op, lambda c: c.fetchrow(query, *args, timeout=timeout), idempotent_read(op, query, idempotent)
        )
        return result

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool | None = None,
        replica: bool = False,
        summary: str | None = None,
    ) -> Any:
        """Run a query and return one value of its first row, or None. ``replica=True``: a replica may serve it."""
        if replica and self._replica is not None:
            return await self._on_replica(
                lambda c: c.fetchval(
                    query, *args, column=column, timeout=timeout, idempotent=idempotent, summary=summary
                )
            )
        op = self._telemetry.statement("fetchval", query, summary)
        return await self._run(
            op,
            lambda c: c.fetchval(query, *args, column=column, timeout=timeout),
            idempotent_read(op, query, idempotent),
        )

    async def transaction(
        self,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        isolation: Isolation = "read_committed",
        readonly: bool = False,
        idempotent: bool = False,
        summary: str | None = None,
        operation: str | None = None,
    ) -> T:
        """Run ``fn(connection)`` in a transaction and return its result; re-run it whole when that is safe.

        Re-run on serialization failure (40001) and deadlock (40P01), and on connection failures before COMMIT
        was sent (the server then rolled the transaction back). A failure during COMMIT is re-run only when
        ``idempotent`` is true; otherwise it raises OutcomeUnknownError. ``fn`` may therefore run more than once:
        keep side effects outside the database out of it, and do not keep the connection after it returns.

        ``summary`` names it in telemetry (``db.query.summary`` and ``db.operation.name``; default
        ``transaction``); keep it low-cardinality. ``operation`` is its deprecated older name.
        """
        if operation is not None:
            warnings.warn(
                "PostgresClient.transaction(operation=...) is deprecated; use summary=...", DeprecationWarning, 2
            )
        name = summary or operation or "transaction"
        op = self._telemetry.named("transaction", name, name)
        return await self._transaction(op, fn, isolation=isolation, readonly=readonly, idempotent=idempotent)

    async def _transaction(
        self,
        op: SqlOperation,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        isolation: Isolation = "read_committed",
        readonly: bool = False,
        idempotent: bool = False,
    ) -> T:
        """:meth:`transaction`, named by ``op``."""
        body = transaction_body(fn, isolation, readonly)
        return await self._run(op, body, idempotent)

    async def run(self, operation: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], idempotent: bool) -> T:
        """Run ``fn`` on a pooled connection through the pipeline (for operations the client lacks).

        ``operation`` names it in telemetry, as its ``db.query.summary`` and ``db.operation.name`` (keep it
        low-cardinality: a name, never a value); ``idempotent`` says ``fn`` may be run again
        after its requests may have reached the server. ``fn`` may send several statements, each committed on its
        own: once it has been called, any failure counts as possibly applied, so a non-idempotent ``fn`` is never
        run twice (use :meth:`transaction` for several statements that must apply together).
        """
        op = self._telemetry.named("run", operation, operation)
        return await self._run(op, fn, idempotent, several_requests=True)

    async def _run(
        self,
        operation: str,
        fn: Callable[[asyncpg.Connection], Awaitable[T]],
        idempotent: bool,
        *,
        several_requests: bool = False,
    ) -> T:
        """``several_requests``: ``fn`` may send several statements (a caller's ``run``), so once it ran, a failure
        counts as possibly applied; otherwise it sends one statement (or one transaction) and failures are read as
        they are."""
        gate = self._gate
        if gate is None:  # connect on demand: the connect and the call share one deadline
            steps = CallSteps(self.settings.retry.deadline)
            await self.connect()
            if self._gate is None:
                raise RuntimeError("PostgresClient was closed during connect()")
            with steps.next():
                return await self._run(operation, fn, idempotent, several_requests=several_requests)
        traced = self.settings.statement_spans

        async def attempt() -> T:
            conn = await gate.acquire()
            borrowed = time.perf_counter()
            scope = statement_scope(True) if traced else None
            try:
                try:
                    return await fn(conn)
                except asyncpg.InterfaceError as exc:
                    if connections.is_closed(conn):  # asyncpg refused to send on a connection that was already gone
                        raise RequestNotSent(connections.lost(exc)) from exc
                    raise
                except (asyncpg.ReadOnlySQLTransactionError, RequestNotSent) as exc:
                    # A transaction marks what failed before COMMIT (RequestNotSent): a read-only refusal too.
                    refused = exc.original if isinstance(exc, RequestNotSent) else exc
                    if (
                        isinstance(refused, asyncpg.ReadOnlySQLTransactionError)
                        and self._writable
                        and await connections.server_is_read_only(conn)
                    ):
                        await gate.expire()  # reconnect: target_session_attrs=read-write skips the read-only host
                        raise ReadOnlyServerError("the server is read-only (standby or demoted primary)") from refused
                    raise
            except Exception as exc:
                if not several_requests:
                    raise
                # fn may have committed statements before the one that failed
                original = exc.original if isinstance(exc, RequestNotSent) else exc
                raise PartlyApplied(original) from original
            finally:
                if scope is not None:
                    end_statement_scope(scope)
                gate.release(conn, borrowed)

        return await self._pipeline.call(operation, attempt, idempotent=idempotent)

    # -- internals -------------------------------------------------------------------------------------------------
    async def _on_replica(self, read: Callable[[PostgresClient], Awaitable[T]]) -> T:
        """Run ``read`` on the replica; with ``replica_fallback``, on the primary if the replica cannot serve it.

        Falls back after any :class:`ServiceUnavailableError` except a spent deadline: the replica's breaker is
        open (no time lost), it stayed unreachable through its retries, or its pool was exhausted. A read changes
        nothing, so sending it again is safe. Caller errors are raised as they are.
        """
        assert self._replica is not None
        steps = CallSteps(self.settings.retry.deadline)
        try:
            return await read(self._replica)
        except ServiceUnavailableError as exc:
            if not self.settings.replica_fallback or isinstance(exc, DeadlineExceededError):
                raise
            _log.debug("replica %s cannot serve a read (%s); sending it to the primary", self._replica, type(exc))
        with steps.next():  # the fallback gets what the replica left
            return await read(self)

    async def _create_gate(self) -> PoolGate:
        return await create_gate(self.settings, self._telemetry, self._tracer_provider)

    def _pool_stats(self) -> PoolStats | None:
        gate = self._gate
        return gate.stats() if gate is not None else None

    def _breaker_states(self) -> list[tuple[dict[str, str], str]]:
        return [(self._telemetry.pool_attributes, self.breaker.state.value)]

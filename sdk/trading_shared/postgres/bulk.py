"""Bulk write paths: the services' legacy jsonb[] upsert function, and COPY into a staging table."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import asyncpg

if TYPE_CHECKING:
    from .query_telemetry import PostgresTelemetry, SqlOperation

T = TypeVar("T")
_log = logging.getLogger("trading_shared.postgres.client")
_STATUS_COUNT = re.compile(r"(\d+)$")

LEGACY_UPSERT_SQL = "SELECT bulk_upsert_instruments($1::jsonb[])"


def with_exchange(instruments: Sequence[Mapping[str, Any]], exchange_name: str) -> list[dict[str, Any]]:
    """New dicts with ``exchange`` added; the caller's list and dicts are left untouched."""
    return [{**instrument, "exchange": exchange_name} for instrument in instruments]


def quote_ident(name: str) -> str:
    """Quote an SQL identifier; rejects empty names and NUL bytes (ValueError, before any I/O)."""
    if not name or "\x00" in name:
        raise ValueError("identifier must be non-empty and contain no NUL byte")
    return '"' + name.replace('"', '""') + '"'


class CopyUpsert:
    """``COPY`` rows into an ``ON COMMIT DROP`` temp table shaped like the target, then ``INSERT .. ON CONFLICT``.

    Run inside a transaction: the staging table vanishes at commit or rollback, so no session state is left.
    Identifiers are quoted; values only ever travel through COPY's binary protocol.
    """

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        key_columns: Sequence[str],
        update_columns: Sequence[str] | None,
        schema: str | None,
    ) -> None:
        if not columns or not key_columns:
            raise ValueError("columns and key_columns must not be empty")
        missing = [k for k in key_columns if k not in columns]
        if missing:
            raise ValueError("every key column must be one of columns")
        updates = [c for c in columns if c not in key_columns] if update_columns is None else list(update_columns)
        target = (quote_ident(schema) + "." if schema else "") + quote_ident(table)
        cols = ", ".join(quote_ident(c) for c in columns)
        keys = ", ".join(quote_ident(k) for k in key_columns)
        self.columns = list(columns)
        self.create_sql = f"CREATE TEMP TABLE IF NOT EXISTS _ts_stage (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP"
        #: What asyncpg sends for the COPY (for telemetry: the three statements in order).
        self.copy_sql = f"COPY _ts_stage ({cols}) FROM STDIN (FORMAT binary)"
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates)
            if updates
            else "DO NOTHING"
        )
        self.merge_sql = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM _ts_stage ON CONFLICT ({keys}) {action}"
        self.statements = (self.create_sql, self.copy_sql, self.merge_sql)

    async def run(self, conn: asyncpg.Connection, rows: list[Sequence[Any]]) -> int:
        """Stage and merge ``rows``; returns the rows inserted or updated."""
        await conn.execute(self.create_sql)
        await conn.copy_records_to_table("_ts_stage", records=rows, columns=self.columns)
        status: str = await conn.execute(self.merge_sql)
        return int(status.rsplit(" ", 1)[-1])


class BulkMethods:
    """:class:`~trading_shared.PostgresClient`'s bulk writes: the jsonb[] upsert function and the COPY paths."""

    if TYPE_CHECKING:
        _telemetry: PostgresTelemetry

        async def _run(
            self,
            operation: str,
            fn: Callable[[asyncpg.Connection], Awaitable[T]],
            idempotent: bool,
            *,
            several_requests: bool = False,
        ) -> T:
            """Provided by PostgresClient."""
            ...

        async def _transaction(
            self,
            op: SqlOperation,
            fn: Callable[[asyncpg.Connection], Awaitable[T]],
            *,
            isolation: Literal["read_committed", "repeatable_read", "serializable"] = "read_committed",
            readonly: bool = False,
            idempotent: bool = False,
        ) -> T:
            """Provided by PostgresClient."""
            ...

    async def bulk_upsert_instruments(self, instruments: Sequence[Mapping[str, Any]], exchange_name: str) -> int:
        """Upsert instruments through the services' ``bulk_upsert_instruments(jsonb[])`` database function.

        Adds ``exchange`` to a copy of each instrument (the caller's list and dicts are never mutated). The
        function upserts, so the call is safe to re-send. Returns how many instruments were sent.
        """
        if not instruments:
            return 0
        payload = with_exchange(instruments, exchange_name)
        op = self._telemetry.statement("bulk_upsert_instruments", LEGACY_UPSERT_SQL)
        await self._run(op, lambda c: c.execute(LEGACY_UPSERT_SQL, payload), True)
        _log.info("bulk-upserted %d instruments for one exchange", len(payload))
        return len(payload)

    async def copy_upsert(
        self,
        table: str,
        records: Iterable[Sequence[Any]],
        *,
        columns: Sequence[str],
        key_columns: Sequence[str],
        update_columns: Sequence[str] | None = None,
        schema: str | None = None,
    ) -> int:
        """Bulk upsert through COPY into a temporary staging table, then one ``INSERT .. ON CONFLICT``.

        The fastest write path for large batches (several times the jsonb-function path). Keyed, so safe to
        re-send; atomic (one transaction). Returns the number of rows inserted or updated. In telemetry it is a batch
        of its three statements (``CREATE _ts_stage COPY _ts_stage INSERT {table} SELECT _ts_stage``).
        """
        rows = list(records)
        if not rows:
            return 0
        plan = CopyUpsert(table, columns, key_columns, update_columns, schema)
        op = self._telemetry.statements("copy_upsert", plan.statements)
        return await self._transaction(op, lambda c: plan.run(c, rows), idempotent=True)

    async def copy_records(
        self, table: str, records: Iterable[Sequence[Any]], *, columns: Sequence[str], schema: str | None = None
    ) -> int:
        """Plain COPY of rows into ``table`` (atomic, not keyed: never re-sent once it may have been applied).

        In telemetry it is one operation, ``COPY {schema.table}``, however many rows it carries.
        """
        rows = list(records)
        if not rows:
            return 0
        target = f"{schema}.{table}" if schema else table
        op = self._telemetry.named("copy_records", f"COPY {target}", "COPY", collection=target, fallback="COPY")
        status: str = await self._run(
            op,
            lambda c: c.copy_records_to_table(table, records=rows, columns=list(columns), schema_name=schema),
            False,
        )
        found = _STATUS_COUNT.search(status)
        return int(found.group(1)) if found else 0

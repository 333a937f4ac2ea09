"""Bulk write paths: the services' legacy jsonb[] upsert function, and COPY into a staging table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

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
        self.create_sql = (
            f"CREATE TEMP TABLE IF NOT EXISTS _ts_stage (LIKE {target} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        action = (
            "DO UPDATE SET " + ", ".join(f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in updates)
            if updates
            else "DO NOTHING"
        )
        self.merge_sql = f"INSERT INTO {target} ({cols}) SELECT {cols} FROM _ts_stage ON CONFLICT ({keys}) {action}"

    async def run(self, conn: asyncpg.Connection, rows: list[Sequence[Any]]) -> int:
        """Stage and merge ``rows``; returns the rows inserted or updated."""
        await conn.execute(self.create_sql)
        await conn.copy_records_to_table("_ts_stage", records=rows, columns=self.columns)
        status: str = await conn.execute(self.merge_sql)
        return int(status.rsplit(" ", 1)[-1])

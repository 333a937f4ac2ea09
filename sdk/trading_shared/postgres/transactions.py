"""The attempt of :meth:`PostgresClient.transaction`, and whether a statement only reads (its idempotency)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import asyncpg

from ..errors import TradingSharedError
from ..resilience.faults import RequestNotSent
from . import connections
from .query_telemetry import SqlOperation

T = TypeVar("T")
Isolation = Literal["read_committed", "repeatable_read", "serializable"]
_READ_START = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(SELECT|WITH|SHOW|VALUES|TABLE|EXPLAIN)\b", re.I | re.S)
_WRITE_WORD = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE|COPY|ANALYZE|LOCK|NEXTVAL|SETVAL|SET_CONFIG)\b", re.I)


def idempotent(op: SqlOperation, query: str, given: bool | None) -> bool:
    """``given``, else whether ``query`` only reads (cached on the operation, made once per statement text)."""
    if given is not None:
        return given
    known = op.readonly
    if known is None:
        known = op.readonly = bool(_READ_START.match(query)) and not _WRITE_WORD.search(query)
    return known


def transaction_body(
    fn: Callable[[asyncpg.Connection], Awaitable[T]], isolation: Isolation, readonly: bool
) -> Callable[[asyncpg.Connection], Awaitable[T]]:
    """One attempt of a transaction running ``fn``: failures before COMMIT was sent are marked as not applied.

    The mark (:class:`RequestNotSent`) only says "nothing was committed"; what the error means is left to the
    pipeline's classification, which turns an unknown outcome into "not sent" and leaves every other verdict (the
    caller's error, a conflict) as it is.
    """

    async def body(conn: asyncpg.Connection) -> T:
        tx = conn.transaction(isolation=isolation, readonly=readonly)
        try:
            await tx.start()
            result = await fn(conn)
        except BaseException as exc:
            if connections.is_closed(conn):
                if isinstance(exc, Exception):  # the connection died before COMMIT: rolled back
                    raise RequestNotSent(connections.lost(exc)) from exc
                raise
            if not isinstance(exc, Exception):
                raise  # cancelled (maybe by the deadline): no await here; the pool's release rolls back
            with contextlib.suppress(Exception):
                await tx.rollback()
            if isinstance(exc, TradingSharedError):
                raise  # another client's error, raised in fn: it says nothing about this server
            raise RequestNotSent(exc) from exc  # never committed: the server rolled it back
        if connections.is_closed(conn):
            raise RequestNotSent(asyncpg.ConnectionDoesNotExistError("connection lost before COMMIT was sent"))
        await tx.commit()  # a failure here may or may not have committed
        return result

    return body

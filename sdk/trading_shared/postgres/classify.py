"""asyncpg errors by type and SQLSTATE (never by message): what each means for retries and the breaker."""

from __future__ import annotations

import os
import socket
import ssl
from urllib.parse import parse_qs, urlsplit

import asyncpg
from asyncpg.exceptions import TargetServerAttributeNotMatched

from ..resilience.faults import NETWORK_ERRNOS as _NETWORK_ERRNOS
from ..resilience.faults import Fault

#: SQLSTATEs that say the server or the connection failed. The request may have been applied, unless the client
#: knows it failed before sending (it then wraps the error in RequestNotSent).
_INFRASTRUCTURE = frozenset({"57P01", "57P02", "57P03", "53300"})
_CONFLICT = frozenset({"40001", "40P01"})
_PROTOCOL_VIOLATION = "08P01"  # class 08, but the server answered: it is the request that is malformed
_READ_ONLY = "25006"  # read_only_sql_transaction


class PoolAcquireTimeout(TimeoutError):
    """Raised by the client when every pooled connection stayed busy for ``acquire_timeout`` seconds."""


class ReadOnlyServerError(Exception):
    """A statement was refused with SQLSTATE 25006 because the SERVER is read-only, not the caller's transaction.

    The server is a hot standby, or a primary that was demoted or fenced (``default_transaction_read_only``) after
    a failover while the pool still held connections to it. Nothing was applied. The client raises this around
    the driver's :class:`asyncpg.ReadOnlySQLTransactionError` (its ``__cause__``) after expiring its pool, so the
    retry connects anew and ``target_session_attrs=read-write`` picks the writable host. A 25006 in a transaction
    the caller made read-only stays the driver's error (a caller error).
    """


class LoginRefusedError(Exception):
    """The server or a pooler refused the login with SQLSTATE 08P01 (the driver's error is the ``__cause__``).

    PgBouncer reports its own conditions this way while a client logs in: ``no more connections allowed
    (max_client_conn)``, ``query_wait_timeout``, ``server login has been failing``, ``pgbouncer cannot connect to
    server``. Only a start-up message had been sent, so nothing was applied: transient, unlike an 08P01 answering a
    statement (a malformed request).
    """


class PostgresErrors:
    """Implements the pipeline's DriverErrors for asyncpg.

    ``tls_required``: the client demands TLS (sslmode require, verify-ca or verify-full). Only then can the plain
    ``ConnectionError`` of asyncpg's TLS negotiation be a refusal (a configuration error); otherwise it is a
    connection closed mid-negotiation (a pooler or load balancer that accepts and then drops): transient.
    """

    def __init__(self, *, tls_required: bool = False) -> None:
        self._tls_required = tls_required

    @classmethod
    def for_settings(cls, ssl_setting: str | None, dsn: str) -> PostgresErrors:
        """The classifier for a client with these settings (``ssl`` wins over the DSN's ``sslmode``, as in asyncpg)."""
        mode = ssl_setting
        if mode is None:
            modes = parse_qs(urlsplit(dsn).query).get("sslmode")
            mode = modes[-1] if modes else os.environ.get("PGSSLMODE")
        return cls(tls_required=mode in ("require", "verify-ca", "verify-full"))

    def classify(self, exc: BaseException) -> Fault:
        """Map an exception from asyncpg (or the socket under it) to a :class:`Fault`."""
        if isinstance(exc, ReadOnlyServerError):
            return Fault.UNAVAILABLE  # refused, not applied: safe to re-send, even a non-idempotent write
        if isinstance(exc, LoginRefusedError):
            return Fault.UNAVAILABLE
        if isinstance(exc, asyncpg.PostgresError):
            state = exc.sqlstate or ""
            if state in _CONFLICT:
                return Fault.CONFLICT
            if state == _PROTOCOL_VIOLATION:
                return Fault.CALLER  # the server refused a malformed message (a NUL byte in the SQL text): not applied
            if state.startswith("08") or state in _INFRASTRUCTURE:
                return Fault.INDETERMINATE
            return Fault.CALLER
        if isinstance(exc, TargetServerAttributeNotMatched):
            # Every host of a multi-host DSN answered, none matched target_session_attrs: mid-failover (no primary
            # yet) or a replica list with no standby. Raised while connecting, so nothing was sent.
            return Fault.INDETERMINATE
        if isinstance(exc, TimeoutError):
            return Fault.POOL_EXHAUSTED if isinstance(exc, PoolAcquireTimeout) else Fault.INDETERMINATE
        if isinstance(exc, socket.gaierror | ssl.SSLError):
            return Fault.CALLER  # unknown host, TLS mismatch: configuration, retrying cannot help
        if isinstance(exc, ConnectionRefusedError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return Fault.INDETERMINATE
        if type(exc) is ConnectionError:
            # asyncpg's TLS negotiation raises a plain ConnectionError both when the server refuses TLS and when the
            # connection closes mid-negotiation; only the first, and only when TLS is required, is configuration.
            return Fault.CALLER if self._tls_required else Fault.INDETERMINATE
        if isinstance(exc, asyncpg.InternalClientError):
            # asyncpg's protocol is out of step with the server, in practice after an unsolicited server message
            # (the FATAL of a terminated backend) read before the connection's EOF: the next request fails with
            # "another operation is in progress". The connection is unusable (the pool discards it on release);
            # the request may or may not have been sent.
            return Fault.INDETERMINATE
        if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
            return Fault.INDETERMINATE
        return Fault.CALLER

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        """``(error.type, db.response.status_code)``: the SQLSTATE when there is one, else the class name."""
        if isinstance(exc, ReadOnlyServerError):
            return _READ_ONLY, _READ_ONLY
        if isinstance(exc, LoginRefusedError):
            return _PROTOCOL_VIOLATION, _PROTOCOL_VIOLATION
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
            return exc.sqlstate, exc.sqlstate
        return type(exc).__name__, None

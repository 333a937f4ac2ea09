"""asyncpg errors by type and SQLSTATE (never by message): what each means for retries and the breaker."""

from __future__ import annotations

import errno
import socket
import ssl

import asyncpg

from ..resilience.faults import Fault

#: SQLSTATEs that say the server or the connection failed. The request may have been applied, unless the client
#: knows it failed before sending (it then wraps the error in RequestNotSent).
_INFRASTRUCTURE = frozenset({"57P01", "57P02", "57P03", "53300"})
_CONFLICT = frozenset({"40001", "40P01"})
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)


class PoolAcquireTimeout(TimeoutError):
    """Raised by the client when every pooled connection stayed busy for ``acquire_timeout`` seconds."""


class PostgresErrors:
    """Implements the pipeline's DriverErrors for asyncpg."""

    def classify(self, exc: BaseException) -> Fault:
        """Map an exception from asyncpg (or the socket under it) to a :class:`Fault`."""
        if isinstance(exc, asyncpg.PostgresError):
            state = exc.sqlstate or ""
            if state in _CONFLICT:
                return Fault.CONFLICT
            if state.startswith("08") or state in _INFRASTRUCTURE:
                return Fault.INDETERMINATE
            return Fault.CALLER
        if isinstance(exc, TimeoutError):
            return Fault.POOL_EXHAUSTED if isinstance(exc, PoolAcquireTimeout) else Fault.INDETERMINATE
        if isinstance(exc, socket.gaierror | ssl.SSLError):
            return Fault.CALLER  # unknown host, TLS mismatch: configuration, retrying cannot help
        if isinstance(exc, ConnectionRefusedError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return Fault.INDETERMINATE
        if type(exc) is ConnectionError:
            # asyncpg raises a plain ConnectionError when the server refuses the TLS upgrade: configuration.
            return Fault.CALLER
        if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
            return Fault.INDETERMINATE
        return Fault.CALLER

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        """``(error.type, db.response.status_code)``: the SQLSTATE when there is one, else the class name."""
        if isinstance(exc, asyncpg.PostgresError) and exc.sqlstate:
            return exc.sqlstate, exc.sqlstate
        return type(exc).__name__, None

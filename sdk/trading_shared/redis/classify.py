"""redis-py errors by type and RESP error code (never by message text): what each means for retries and the breaker.

======================================================  ================  ==========================================
Error                                                   Fault             Why
======================================================  ================  ==========================================
:class:`ConnectFailed` (raised while connecting)        UNAVAILABLE       the command was never sent
:class:`MasterNotFoundError`, :class:`NotMasterError`   UNAVAILABLE       sentinel look-up / ROLE check: never sent
``MaxConnectionsError``                                 POOL_EXHAUSTED    the client's own pool is full: fail fast
``AuthenticationError``, ``AuthorizationError``         CALLER            credentials: retrying cannot help
``ConnectionError`` from an unknown host                CALLER            configuration (``EAI_AGAIN`` is transient)
:class:`PlaintextServerError` (``rediss://`` to a       CALLER            configuration: the port has no TLS
server that answers plain RESP)
``ConnectionError`` from TLS set-up: certificate        CALLER            configuration (an SSL EOF, a connection
verification, other ``SSLError``, a missing or                            closed mid-handshake, is transient)
unreadable CA/cert/key file
``BusyLoadingError`` (LOADING)                          UNAVAILABLE       refused, not applied: the server is loading
``ReadOnlyError``, ``TryAgainError``,                   UNAVAILABLE       refused, not applied: failover / resharding
``ClusterDownError``, ``MasterDownError``, ``BUSY``,
``NOREPLICAS`` (``min-replicas-to-write``),
:class:`TooManyRedirects` (MOVED/ASK loop)
:class:`NotReplicatedError` (WAIT fell short)           INDETERMINATE     applied on the master; a failover may lose it
:class:`MasterChangedError` (master demoted mid-call)   INDETERMINATE     applied on a server that discards it
other ``ConnectionError``, ``TimeoutError``             INDETERMINATE     the request may have reached the server
``InvalidResponse``, builtin socket errors              INDETERMINATE     the connection broke mid-reply
other ``ResponseError`` (WRONGTYPE, syntax, OOM, ...)   CALLER            the server answered: raised unchanged
``DataError`` and anything else                         CALLER            bad input or a bug: raised unchanged
======================================================  ================  ==========================================

redis-py maps most RESP error codes to exception classes; codes it does not map (WRONGTYPE, NOGROUP, BUSYGROUP,
BUSY) arrive as a plain ``ResponseError`` whose message starts with the code, which :func:`error_code` reads.
"""

from __future__ import annotations

import socket
import ssl

import redis.exceptions as rex

from ..resilience.faults import NETWORK_ERRNOS as _NETWORK_ERRNOS
from ..resilience.faults import Fault

#: RESP error codes (the reply's first word) of requests the server refused without applying them.
_REFUSED_CODES = frozenset({"BUSY", "LOADING", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "MASTERDOWN", "NOREPLICAS"})
_REFUSED_TYPES = (rex.BusyLoadingError, rex.ReadOnlyError, rex.TryAgainError, rex.ClusterDownError)
_AUTH_TYPES = (rex.AuthenticationError, rex.AuthorizationError, rex.ExternalAuthProviderError)


class NotReplicatedError(rex.RedisError):
    """A write the master applied but fewer than ``wait_replicas`` replicas confirmed within ``wait_timeout``.

    The write is on the master and may be lost if the master fails over before its replicas catch up: its outcome
    is unknown (INDETERMINATE), so only idempotent operations are re-sent after it.
    """

    def __init__(self, confirmed: int, wanted: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replicas confirmed the write")
        self.confirmed = confirmed
        self.wanted = wanted


class NotMasterError(rex.ConnectionError):
    """The server a sentinel named as master does not say ``ROLE master``: nothing was sent to it."""


class MasterChangedError(rex.ConnectionError):
    """The server stopped being the master while this request to it was in flight (sentinel mode).

    The client closed the connection when it learnt of the failover, since a reply from the demoted server could
    acknowledge a write that server is about to discard. The request may have been applied there, and lost: its
    outcome is unknown (INDETERMINATE), so only idempotent operations are re-sent, to the new master.
    """


class MasterNotFoundError(rex.ConnectionError):
    """No sentinel named a master for the service (all unreachable, or none knows the name)."""


class PlaintextServerError(rex.ConnectionError):
    """``rediss://`` (TLS) was asked for, but the server answers plain RESP on that port: a configuration error.

    A plaintext redis-server reads the TLS ClientHello as the start of an inline command and waits for its end, so
    the handshake only times out. After such a timeout the connection probes the port with a plain ``PING``; an
    answer means TLS will never work there, and the call fails at once instead of retrying until its deadline.
    """


class TooManyRedirects(rex.RedisError):
    """A cluster command was redirected (MOVED/ASK) more times than allowed: no node executed it."""


class ConnectFailed(rex.ConnectionError):
    """Raised by the SDK's connection classes when opening a connection failed: the command was never sent.

    ``original`` is redis-py's own error (a ``ConnectionError`` or ``TimeoutError``). Internal: the client turns it
    into :class:`~trading_shared.resilience.RequestNotSent` and callers only ever see ``original``.
    """

    def __init__(self, original: rex.RedisError) -> None:
        super().__init__(type(original).__name__)
        self.original = original


def error_code(exc: BaseException) -> str | None:
    """The RESP error code of a server error reply (``WRONGTYPE``, ``NOGROUP``, ``LOADING``...), else None.

    redis-py keeps the code in ``status_code`` for the errors it maps to classes, and leaves it as the first word
    of the message for the others. Only a short all-capitals word counts as a code.
    """
    if not isinstance(exc, rex.RedisError):
        return None
    code = exc.status_code
    if code is None and isinstance(exc, rex.ResponseError) and exc.args and isinstance(exc.args[0], str):
        code = exc.args[0].split(" ", 1)[0]
    if code and len(code) <= 32 and code.isalpha() and code.isupper():
        return code
    return None


def _unknown_host(exc: BaseException) -> bool:
    """redis-py re-raises a DNS failure as ConnectionError with the ``socket.gaierror`` as its context."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 5:
        if isinstance(cause, socket.gaierror):
            return cause.errno != socket.EAI_AGAIN
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


#: TLS errors that say the connection closed mid-handshake (transient), not that the configuration is wrong.
_SSL_TRANSIENT = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError)


def _tls_misconfigured(exc: BaseException) -> bool:
    """A connect failure caused by the TLS configuration: the server's certificate failed verification, another
    TLS error (protocol version, cipher, bad key), or a CA/cert/key file that is missing or unreadable. redis-py
    re-raises these as ConnectionError with the original error as cause or context."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 5:
        if isinstance(cause, ssl.SSLError):
            return not isinstance(cause, _SSL_TRANSIENT)
        if isinstance(cause, FileNotFoundError | PermissionError | IsADirectoryError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


class RedisErrors:
    """Implements the pipeline's DriverErrors for redis-py (asyncio)."""

    def classify(self, exc: BaseException) -> Fault:
        """Map an exception from redis-py (or the socket under it) to a :class:`Fault`."""
        if isinstance(exc, ConnectFailed):
            fault = self.classify(exc.original)
            return Fault.UNAVAILABLE if fault is Fault.INDETERMINATE else fault
        if isinstance(exc, rex.RedisError):
            if isinstance(exc, rex.MaxConnectionsError):
                return Fault.POOL_EXHAUSTED
            if isinstance(exc, (*_AUTH_TYPES, PlaintextServerError)):
                return Fault.CALLER
            if isinstance(exc, (*_REFUSED_TYPES, TooManyRedirects)):
                return Fault.UNAVAILABLE
            if isinstance(exc, NotReplicatedError):
                return Fault.INDETERMINATE
            if isinstance(exc, rex.ConnectionError):
                return Fault.CALLER if _unknown_host(exc) or _tls_misconfigured(exc) else Fault.INDETERMINATE
            if isinstance(exc, rex.TimeoutError | rex.InvalidResponse):
                return Fault.INDETERMINATE
            if isinstance(exc, rex.ResponseError) and error_code(exc) in _REFUSED_CODES:
                return Fault.UNAVAILABLE
            return Fault.CALLER
        if isinstance(exc, TimeoutError | ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
            return Fault.INDETERMINATE
        if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
            return Fault.INDETERMINATE
        return Fault.CALLER

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        """``(error.type, db.response.status_code)``: the class name and the RESP error code, if any."""
        if isinstance(exc, ConnectFailed):
            exc = exc.original
        return type(exc).__name__, error_code(exc)

"""Redis error classification by type and RESP code (pure logic, no server)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import pytest
import redis.exceptions as rex

from trading_shared.redis import RedisErrors
from trading_shared.redis.classify import ConnectFailed, error_code
from trading_shared.resilience import Fault

ERRORS = RedisErrors()


def _with_context(exc: BaseException, context: BaseException) -> BaseException:
    exc.__context__ = context
    return exc


@pytest.mark.parametrize(
    ("exc", "fault"),
    [
        (rex.ConnectionError("Connection closed by server."), Fault.INDETERMINATE),
        (rex.TimeoutError("Timeout reading from socket"), Fault.INDETERMINATE),
        (rex.InvalidResponse("Protocol error"), Fault.INDETERMINATE),
        (ConnectFailed(rex.ConnectionError("Error 111 connecting")), Fault.UNAVAILABLE),
        (ConnectFailed(rex.TimeoutError("Timeout connecting to server")), Fault.UNAVAILABLE),
        (ConnectFailed(rex.BusyLoadingError("Redis is loading")), Fault.UNAVAILABLE),
        (rex.MaxConnectionsError("Too many connections"), Fault.POOL_EXHAUSTED),
        (rex.AuthenticationError("invalid username-password pair", status_code="WRONGPASS"), Fault.CALLER),
        (rex.AuthorizationError("no permission"), Fault.CALLER),
        (rex.BusyLoadingError("Redis is loading the dataset in memory", status_code="LOADING"), Fault.UNAVAILABLE),
        (rex.ReadOnlyError("You can't write against a read only replica.", status_code="READONLY"), Fault.UNAVAILABLE),
        (rex.TryAgainError("Multiple keys request during rehashing of slot"), Fault.UNAVAILABLE),
        (rex.ClusterDownError("The cluster is down"), Fault.UNAVAILABLE),
        (rex.MasterDownError("Link with MASTER is down"), Fault.UNAVAILABLE),
        (rex.ResponseError("BUSY Redis is busy running a script."), Fault.UNAVAILABLE),
        (rex.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), Fault.CALLER),
        (rex.ResponseError("ERR syntax error"), Fault.CALLER),
        (rex.ResponseError("NOGROUP No such key"), Fault.CALLER),
        (rex.OutOfMemoryError("command not allowed when used memory > 'maxmemory'.", status_code="OOM"), Fault.CALLER),
        (rex.DataError("Invalid input of type: 'NoneType'"), Fault.CALLER),
        (rex.NoScriptError("No matching script."), Fault.CALLER),
        (ConnectionResetError(errno.ECONNRESET, "reset"), Fault.INDETERMINATE),
        (TimeoutError(), Fault.INDETERMINATE),
        (OSError(errno.EHOSTUNREACH, "unreachable"), Fault.INDETERMINATE),
        (ValueError("bug"), Fault.CALLER),
        (RuntimeError("closed"), Fault.CALLER),
    ],
)
def test_classification_by_type(exc: BaseException, fault: Fault) -> None:
    assert ERRORS.classify(exc) is fault


def test_auth_errors_are_caller_errors_although_they_subclass_connection_error() -> None:
    assert issubclass(rex.AuthenticationError, rex.ConnectionError)
    assert issubclass(rex.MaxConnectionsError, rex.ConnectionError)
    assert issubclass(rex.BusyLoadingError, rex.ConnectionError)


def test_unknown_host_is_a_caller_error_but_a_temporary_dns_failure_is_not() -> None:
    no_name = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    again = socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
    assert ERRORS.classify(ConnectFailed(_with_context(rex.ConnectionError("x"), no_name))) is Fault.CALLER
    assert ERRORS.classify(ConnectFailed(_with_context(rex.ConnectionError("x"), again))) is Fault.UNAVAILABLE


def test_cancellation_is_not_an_error_class_here() -> None:
    assert ERRORS.classify(asyncio.CancelledError()) is Fault.CALLER  # the pipeline handles it before classifying


@pytest.mark.parametrize(
    ("exc", "described"),
    [
        (rex.ResponseError("WRONGTYPE Operation against a key"), ("ResponseError", "WRONGTYPE")),
        (rex.ResponseError("NOGROUP No such key 'orders' or consumer group"), ("ResponseError", "NOGROUP")),
        (rex.BusyLoadingError("Redis is loading", status_code="LOADING"), ("BusyLoadingError", "LOADING")),
        (rex.AuthenticationError("invalid", status_code="WRONGPASS"), ("AuthenticationError", "WRONGPASS")),
        (ConnectFailed(rex.ConnectionError("Error 111")), ("ConnectionError", None)),
        (rex.TimeoutError("Timeout reading"), ("TimeoutError", None)),
        (rex.ResponseError("unknown command 'foo', with args"), ("ResponseError", None)),
        (rex.ResponseError("Err lower"), ("ResponseError", None)),
    ],
)
def test_describe_gives_class_and_resp_code_only(exc: BaseException, described: tuple[str, str | None]) -> None:
    assert ERRORS.describe(exc) == described


def test_error_code_ignores_non_redis_errors() -> None:
    assert error_code(ValueError("WRONGTYPE")) is None


@pytest.mark.parametrize(
    "cause",
    [
        ssl.SSLCertVerificationError(1, "certificate verify failed: unable to get local issuer certificate"),
        ssl.SSLError(1, "wrong version number"),
        FileNotFoundError(errno.ENOENT, "No such file or directory"),
        PermissionError(errno.EACCES, "Permission denied"),
    ],
)
def test_tls_configuration_errors_are_caller_errors(cause: BaseException) -> None:
    assert ERRORS.classify(ConnectFailed(_with_context(rex.ConnectionError("x"), cause))) is Fault.CALLER
    assert ERRORS.classify(_with_context(rex.ConnectionError("x"), cause)) is Fault.CALLER


def test_tls_connection_closed_mid_handshake_is_transient() -> None:
    eof = ssl.SSLEOFError(8, "EOF occurred in violation of protocol")
    assert ERRORS.classify(ConnectFailed(_with_context(rex.ConnectionError("x"), eof))) is Fault.UNAVAILABLE

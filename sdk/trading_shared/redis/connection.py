"""Connection classes the SDK's pools use: connect-phase failures are marked, connect time is measured.

redis-py raises the same ``ConnectionError`` whether a command's reply was lost after the server applied it or the
socket could not even be opened. Only the second proves the command was never sent, and only the connection knows
which phase it was in. These subclasses re-raise every network failure of ``connect`` (TCP connect, TLS, the
AUTH/SELECT handshake) as :class:`~.classify.ConnectFailed`, so a non-idempotent command whose connection could not
be opened may still be retried. Authentication and other errors the server answered with pass through unchanged.

Two bad inputs are told apart from outages here, because only the connection sees them. ``rediss://`` against a
plaintext port: TLS connections open TCP first and run the handshake after it, and a handshake that times out on a
port that answers a plain ``PING`` raises :class:`~.classify.PlaintextServerError` (a configuration error, not
retried). A request the server refuses as a protocol error (a value over ``proto-max-bulk-len``) while the client is
still writing it: the server replies ``-ERR Protocol error`` and closes, so the write fails; the reply already read
is raised as the server's ``ResponseError`` instead of a lost connection, since nothing of the request was applied.

Connections to a master found through Sentinel (keyword :data:`MASTER_CHECK`) end their connect with two checks: the
server's ``ROLE`` is ``master``, and the sentinels still name this address as the master (the callback asks them). A
server that fails either fails the connect with :class:`~.classify.NotMasterError`, so nothing is sent there: a
demoted master, and also an old master restarted after a failover, which calls itself master until the sentinels
reconfigure it (up to their INFO period, 10 s by default) and discards what it took when it resyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio.connection as rconn
import redis.exceptions as rex

from ..compat import asyncio as asyncio_compat
from ..compat import redis as redis_compat
from ..resilience.faults import PartlyApplied, RequestNotSent
from .classify import ConnectFailed, NotMasterError, PlaintextServerError

#: Connection keyword argument carrying the callback that receives each successful connect's duration.
ON_CONNECTED = "ts_on_connected"
#: Connection keyword argument: a :data:`MasterCheck` run on every new connection after its ``ROLE`` is ``master``.
MASTER_CHECK = "ts_master_check"

#: ``check(host, port, since)``: raises :class:`~.classify.NotMasterError` unless the sentinels name ``host:port`` as
#: the master in an answer obtained at or after ``since`` (monotonic), or MasterNotFoundError if none answers.
MasterCheck = Callable[[str, int, float], Awaitable[None]]

#: Longest wait for the plain ``PING`` that tells a plaintext port from a hung one after a TLS handshake timeout.
PLAINTEXT_PROBE_TIMEOUT = 0.25

#: Requests sent during the current attempt of a multi-request call (``[count]``), or None when not counted. Every
#: request written to a connection after it is open counts; the connect handshake (AUTH, SETNAME, SELECT, ROLE)
#: does not, and neither do ASKING and WAIT (see :mod:`.bracketed`), which apply nothing.
SENT: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("trading_shared_redis_sent", default=None)


def not_sent(exc: ConnectFailed, sent: list[int] | None) -> Exception:
    """The marker for a connect failure: nothing of the attempt was sent, unless an earlier request of it was."""
    if sent is not None and sent[0] > 0:
        return PartlyApplied(exc.original)
    return RequestNotSent(exc.original)


class _PhaseMixin:
    """Marks connect-phase failures and reports connect durations. Mixed into redis-py's connection classes."""

    is_connected: bool
    _ts_on_connected: Callable[[float], None] | None
    _ts_master_check: MasterCheck | None
    _ts_connecting: bool

    def _ts_init(self, kwargs: dict[str, Any]) -> None:
        self._ts_on_connected = kwargs.pop(ON_CONNECTED, None)
        self._ts_master_check = kwargs.pop(MASTER_CHECK, None)
        self._ts_connecting = False

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        """Write a request; counted in :data:`SENT` (once the connection is open) unless it is part of connecting."""
        sent = SENT.get()
        if sent is not None and not self._ts_connecting:
            if not self.is_connected:
                await self.connect_check_health(check_health=False)  # a failure here: nothing was sent
            sent[0] += 1
        reader = redis_compat.stream_reader(self)
        try:
            await super().send_packed_command(command, check_health)  # type: ignore[misc]
        except rex.ConnectionError as exc:
            refused = _protocol_error_reply(reader)
            if refused is not None:
                raise refused from exc
            raise

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        """Open the connection (redis-py's logic); network failures come out as ConnectFailed."""
        if self.is_connected:
            return
        started = time.perf_counter()
        since = time.monotonic()
        self._ts_connecting = True
        try:
            try:
                await super().connect_check_health(  # type: ignore[misc]
                    check_health=check_health, retry_socket_connect=retry_socket_connect
                )
            except (rex.AuthenticationError, rex.AuthorizationError, rex.ExternalAuthProviderError, ConnectFailed):
                raise
            except (rex.ConnectionError, rex.TimeoutError) as exc:
                if isinstance(exc.__cause__, PlaintextServerError):  # redis-py wraps what _connect raises
                    raise exc.__cause__ from None
                raise ConnectFailed(exc) from exc
            if self._ts_master_check is not None:
                await self._ts_check_master(self._ts_master_check, since)
        finally:
            self._ts_connecting = False
        if self._ts_on_connected is not None:  # ClientTelemetry.pool_create never raises
            self._ts_on_connected(time.perf_counter() - started)

    async def _ts_check_master(self, check: MasterCheck, since: float) -> None:
        """``ROLE`` on the new connection, then the sentinels' word: anything but their master fails the connect."""
        try:
            await self.send_command("ROLE")  # type: ignore[attr-defined]
            role = await self.read_response()  # type: ignore[attr-defined]
            if not isinstance(role, list) or not role or role[0] not in (b"master", "master"):
                raise NotMasterError("the server is not a master (stale sentinel answer or demoted)")
            await check(self.host, self.port, since)  # type: ignore[attr-defined]
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectFailed(exc) from exc
        except BaseException:  # e.g. an ACL without ROLE: the caller's configuration; or cancelled
            await self.disconnect()  # type: ignore[attr-defined]
            raise


class Connection(_PhaseMixin, rconn.Connection):
    """TCP connection (``redis://``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._ts_init(kwargs)
        super().__init__(**kwargs)


class SSLConnection(_PhaseMixin, rconn.SSLConnection):
    """TLS connection (``rediss://``): TCP first, then the handshake, both within ``socket_connect_timeout``."""

    def __init__(self, **kwargs: Any) -> None:
        self._ts_init(kwargs)
        self._ts_tcp_only = False
        super().__init__(**kwargs)

    def _connection_arguments(self) -> Any:
        arguments = redis_compat.parent_connection_arguments(self)
        if self._ts_tcp_only:
            del arguments["ssl"]
        return arguments

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self._ts_tcp_only = True
        try:
            await redis_compat.parent_connect(self)
        finally:
            self._ts_tcp_only = False
        writer = redis_compat.stream_writer(self)
        assert writer is not None
        limit = self.socket_connect_timeout
        try:
            async with asyncio.timeout(None if limit is None else max(0.0, limit - (loop.time() - started))):
                await writer.start_tls(self.ssl_context.get(), server_hostname=self.host)
        except BaseException as exc:
            writer.close()
            redis_compat.drop_streams(self)
            probe = PLAINTEXT_PROBE_TIMEOUT if limit is None else min(limit, PLAINTEXT_PROBE_TIMEOUT)
            # A plaintext server either waits for the end of the "inline command" (timeout) or, when the ClientHello
            # happens to hold a newline (about 1 in 3), answers -ERR, which the TLS layer reads as a bad record.
            plain_like = isinstance(exc, TimeoutError | ssl.SSLError) and not isinstance(
                exc, ssl.SSLCertVerificationError
            )
            if plain_like and await answers_plain_resp(self.host, self.port, probe):
                raise PlaintextServerError(
                    f"rediss:// (TLS) to {self.host}:{self.port}, but the server answers plain RESP there: that "
                    "port has no TLS (use redis://, or the server's tls-port)"
                ) from None
            raise


class UnixDomainSocketConnection(_PhaseMixin, rconn.UnixDomainSocketConnection):
    """Unix socket connection (``unix://``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._ts_init(kwargs)
        super().__init__(**kwargs)


#: redis-py's connection class (as ``parse_url`` returns it) -> the SDK's subclass.
SDK_CLASSES: dict[type[rconn.AbstractConnection], type[rconn.AbstractConnection]] = {
    rconn.Connection: Connection,
    rconn.SSLConnection: SSLConnection,
    rconn.UnixDomainSocketConnection: UnixDomainSocketConnection,
}


async def answers_plain_resp(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` answers a plain-text ``PING`` with a RESP reply (``+PONG``, ``-NOAUTH``...) in time."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(b"PING\r\n")
                first = await reader.read(1)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError):
        return False
    return first in (b"+", b"-")


def _protocol_error_reply(reader: Any) -> rex.ResponseError | None:
    """The ``-ERR Protocol error ...`` reply the server sent before closing, if the failed write left it unread.

    Only when it is the first reply waiting: then the server refused the first request it had not answered, so
    nothing of the write was applied (asyncio keeps what it read in the stream reader's buffer).
    """
    buffered = asyncio_compat.buffered(reader)
    if not buffered.startswith(b"-ERR Protocol error"):
        return None
    line, crlf, _ = buffered.partition(b"\r\n")
    if not crlf:
        return None
    error = redis_compat.parse_error(line[1:].decode("utf-8", "replace"))
    return error if isinstance(error, rex.ResponseError) else None

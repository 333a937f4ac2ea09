"""Connection classes the SDK's pools use: connect-phase failures are marked, connect time is measured.

redis-py raises the same ``ConnectionError`` whether a command's reply was lost after the server applied it or the
socket could not even be opened. Only the second proves the command was never sent, and only the connection knows
which phase it was in. These subclasses re-raise every network failure of ``connect`` (TCP connect, TLS, the
AUTH/SELECT handshake) as :class:`~.classify.ConnectFailed`, so a non-idempotent command whose connection could not
be opened may still be retried. Authentication and other errors the server answered with pass through unchanged.

Connections to a master found through Sentinel (keyword :data:`EXPECT_MASTER`) also check ``ROLE`` as the last step
of connecting, as the Sentinel client guidelines ask: a server that is not (or no longer) a master fails the connect
with :class:`~.classify.NotMasterError`, so nothing is ever sent to a demoted master on a new connection.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio.connection as rconn
import redis.exceptions as rex

from ..resilience.faults import PartlyApplied, RequestNotSent
from .classify import ConnectFailed, NotMasterError

#: Connection keyword argument carrying the callback that receives each successful connect's duration.
ON_CONNECTED = "ts_on_connected"
#: Connection keyword argument: True to require ``ROLE`` = master before the connection is used.
EXPECT_MASTER = "ts_expect_master"

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
    _ts_expect_master: bool
    _ts_connecting: bool

    def _ts_init(self, kwargs: dict[str, Any]) -> None:
        self._ts_on_connected = kwargs.pop(ON_CONNECTED, None)
        self._ts_expect_master = bool(kwargs.pop(EXPECT_MASTER, False))
        self._ts_connecting = False

    async def send_packed_command(self, command: bytes | str | Iterable[bytes], check_health: bool = True) -> None:
        """Write a request; counted in :data:`SENT` (once the connection is open) unless it is part of connecting."""
        sent = SENT.get()
        if sent is not None and not self._ts_connecting:
            if not self.is_connected:
                await self.connect_check_health(check_health=False)  # a failure here: nothing was sent
            sent[0] += 1
        await super().send_packed_command(command, check_health)  # type: ignore[misc]

    async def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        """Open the connection (redis-py's logic); network failures come out as ConnectFailed."""
        if self.is_connected:
            return
        started = time.perf_counter()
        self._ts_connecting = True
        try:
            try:
                await super().connect_check_health(  # type: ignore[misc]
                    check_health=check_health, retry_socket_connect=retry_socket_connect
                )
            except (rex.AuthenticationError, rex.AuthorizationError, rex.ExternalAuthProviderError, ConnectFailed):
                raise
            except (rex.ConnectionError, rex.TimeoutError) as exc:
                raise ConnectFailed(exc) from exc
            if self._ts_expect_master:
                await self._ts_check_master()
        finally:
            self._ts_connecting = False
        if self._ts_on_connected is not None:  # ClientTelemetry.pool_create never raises
            self._ts_on_connected(time.perf_counter() - started)

    async def _ts_check_master(self) -> None:
        """``ROLE`` on the new connection; anything but a master (or no answer) fails the connect."""
        try:
            await self.send_command("ROLE")  # type: ignore[attr-defined]
            role = await self.read_response()  # type: ignore[attr-defined]
        except (rex.ConnectionError, rex.TimeoutError) as exc:
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectFailed(exc) from exc
        except rex.ResponseError:  # e.g. an ACL without ROLE: the caller's configuration
            await self.disconnect()  # type: ignore[attr-defined]
            raise
        if not isinstance(role, list) or not role or role[0] not in (b"master", "master"):
            await self.disconnect()  # type: ignore[attr-defined]
            raise ConnectFailed(NotMasterError("the server is not a master (stale sentinel answer or demoted)"))


class Connection(_PhaseMixin, rconn.Connection):
    """TCP connection (``redis://``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._ts_init(kwargs)
        super().__init__(**kwargs)


class SSLConnection(_PhaseMixin, rconn.SSLConnection):
    """TLS connection (``rediss://``)."""

    def __init__(self, **kwargs: Any) -> None:
        self._ts_init(kwargs)
        super().__init__(**kwargs)


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

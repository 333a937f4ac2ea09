"""Sentinel mode: the client sends every command to the master the sentinels name, and follows failovers.

Following the Sentinel client guidelines, without redis-py's ``Sentinel`` (whose clients retry by default and
whose master connections turn ``READONLY`` into a generic ``ConnectionError``, i.e. "may have been applied"):

* The master is looked up with ``SENTINEL GET-MASTER-ADDR-BY-NAME`` on the sentinels in order; the first that
  answers is moved to the front. Each sentinel has one connection of its own (``sentinel_password``, the
  client's connect and socket timeouts, no retries).
* Every new connection to the master checks ``ROLE`` before it is used (:mod:`.connection`): a stale answer or a
  demoted master fails the connect, so the command is known not to have been sent, and is retried.
* Any infrastructure failure of an attempt (connection lost, timeout, ``READONLY`` from a master that was demoted
  under its pooled connections, ``WAIT`` falling short) looks the master up again before the retry, once for a
  burst of failures. When the answer changes, the calls that follow go to the new master's endpoint (its own
  pools and breaker) and the old master's idle connections are closed.

Bound on following a failover: a call started after the sentinels switched reaches the new master on its first
attempt if an earlier failure already triggered a look-up, else on its second (one failed attempt, one look-up,
one backoff). An old master that stays up and writable after a forced failover is only detected through
``READONLY`` (once the sentinels reconfigure it, ~10 s with default sentinel timers) or, sooner, through ``WAIT``
falling short when ``wait_replicas`` is set (README.md (Deployments)).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import redis.asyncio.connection as rconn
import redis.exceptions as rex

from ..resilience.faults import RequestNotSent
from ..settings import RedisSettings
from .classify import ConnectFailed, MasterNotFoundError
from .connection import ON_CONNECTED
from .endpoints import Endpoint, Endpoints, Key, Refresher

_log = logging.getLogger(__name__)

#: Seconds between sentinel look-ups made because the master's breaker is open (calls rejected meanwhile wait for
#: no look-up: they see the last answer).
REROUTE_INTERVAL = 0.5
#: Connection arguments of the data connections that sentinel connections do not take.
_NOT_FOR_SENTINELS = ("host", "port", "password", "username", "db", "client_name", "max_connections", ON_CONNECTED)


class SentinelRouter:
    """Routes every call to the current master of ``settings.service_name``."""

    def __init__(self, settings: RedisSettings, kwargs: dict[str, Any], endpoints: Endpoints) -> None:
        assert settings.service_name is not None
        self.endpoints = endpoints
        self._service = settings.service_name
        self._sentinels = settings.sentinel_addresses()
        password = settings.sentinel_password.get_secret_value() if settings.sentinel_password else None
        cls = kwargs["connection_class"]
        base = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_SENTINELS and k != "connection_class"}
        self._connections: dict[tuple[str, int], rconn.AbstractConnection] = {
            (host, port): cls(host=host, port=port, password=password, **base) for host, port in self._sentinels
        }
        self._current: Endpoint | None = None
        self._refresher = Refresher(self._lookup)

    @property
    def master(self) -> Endpoint | None:
        """The endpoint of the master calls go to now (None before :meth:`start`)."""
        return self._current

    async def start(self) -> None:
        """Find the master and open one connection to it (the ``ROLE`` check included)."""
        try:
            host, port = await self._ask()
        except MasterNotFoundError as exc:
            raise RequestNotSent(exc) from exc
        await self._switch(host, port)
        assert self._current is not None
        await self._current.pools.open_one()

    def route(self, key: Key | None) -> Endpoint:
        """The current master."""
        current = self._current
        if current is None:
            raise RuntimeError("RedisClient is not connected")
        return current

    async def failed(self, endpoint: Endpoint, since: float) -> None:
        """Ask the sentinels again (once per burst of failures)."""
        await self._refresher.refresh(since)

    def redirected(self, error: rex.AskError) -> Endpoint:
        """MOVED/ASK do not happen outside a cluster: the reply is raised as it is (the caller's configuration)."""
        raise error

    async def reroute(self, key: Key | None, rejected: Endpoint) -> Endpoint | None:
        """After the master's open breaker refused a call: the new master, if the sentinels now name another."""
        await self._refresher.refresh_if_older(REROUTE_INTERVAL)
        current = self._current
        return current if current is not None and current is not rejected else None

    async def close(self, timeout: float) -> None:
        """Close the endpoints and the sentinel connections."""
        await self.endpoints.close(timeout)
        for conn in self._connections.values():
            with contextlib.suppress(rex.RedisError, OSError):
                await conn.disconnect()

    # -- internals -----------------------------------------------------------------------------------------------------
    async def _lookup(self, avoid: Endpoint | None) -> None:
        host, port = await self._ask()
        await self._switch(host, port)

    async def _switch(self, host: str, port: int) -> None:
        old = self._current
        if old is not None and (old.host, old.port) == (host, port):
            return
        new = self.endpoints.get(host, port)
        if old is not None:
            _log.warning("redis sentinel service %r: master moved from %s to %s", self._service, old.name, new.name)
            new.breaker.reset()  # the sentinels vouch for it: failures of an earlier term do not count
        self._current = new
        if old is not None:
            await old.pools.disconnect_idle()

    async def _ask(self) -> tuple[str, int]:
        """The master's address from the first sentinel that knows it; raises MasterNotFoundError."""
        failures: list[str] = []
        for index, address in enumerate(self._sentinels):
            conn = self._connections[address]
            try:
                await conn.connect()  # type: ignore[no-untyped-call]
                await conn.send_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self._service)
                reply = await conn.read_response()
            except (rex.AuthenticationError, rex.AuthorizationError):
                await conn.disconnect()
                raise
            except (ConnectFailed, rex.ConnectionError, rex.TimeoutError, rex.ResponseError, OSError) as exc:
                failures.append(type(exc.original if isinstance(exc, ConnectFailed) else exc).__name__)
                await conn.disconnect()
                continue
            if isinstance(reply, list) and len(reply) == 2:
                if index:  # the sentinel that answered goes first next time
                    self._sentinels.insert(0, self._sentinels.pop(index))
                host = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
                return host, int(reply[1])
            failures.append("unknown service")
        raise MasterNotFoundError(
            f"no sentinel named a master for service {self._service!r} ({', '.join(failures) or 'no sentinels'})"
        )

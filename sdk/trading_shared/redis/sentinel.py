"""Sentinel mode: the client sends every command to the master the sentinels name, and follows failovers.

Following the Sentinel client guidelines, without redis-py's ``Sentinel`` (whose clients retry by default and
whose master connections turn ``READONLY`` into a generic ``ConnectionError``, i.e. "may have been applied"):

* The master is looked up with ``SENTINEL GET-MASTER-ADDR-BY-NAME`` on the sentinels in order; the first that
  answers is moved to the front. Each sentinel has one connection of its own for look-ups (``sentinel_password``,
  the client's connect and socket timeouts, no retries); look-ups never run concurrently, and callers that need an
  answer no older than a given moment share one look-up.
* The client's idea of the master follows the sentinels, never the last server that answered. Three ways keep it
  current: (1) every new connection to the master checks ``ROLE`` and then that the sentinels still name that
  address (:mod:`.connection`), so an old master restarted after a failover, which calls itself master until the
  sentinels reconfigure it, is never written to; (2) watchers subscribe to every sentinel's failover events and
  move the client the moment a failover ends (``+switch-master``); (3) the sentinels are also asked every
  ``sentinel_check_interval`` seconds (a missed event), and a subscription silent for 3 intervals is renewed.
* From the moment the sentinel leading a failover starts promoting a replica (``+failover-state-send-slaveof-noone``)
  until the switch, the old master takes nothing more: its connections are closed and new ones refused, and calls
  wait (retrying, within their deadline) for the new master. Without this hold, an old master that is still up (a
  ``SENTINEL FAILOVER``, a partition) acknowledges writes for about a second after the replica stopped copying them.
  The hold ends at the switch, at an abort event, or after :data:`HOLD_LIMIT` seconds.
* Any infrastructure failure of an attempt (connection lost, timeout, ``READONLY``, ``WAIT`` falling short) also
  looks the master up again before the retry, once for a burst of failures.
* When the master changes, the calls that follow go to the new master's endpoint (its own pools and breaker,
  reset: the sentinels vouch for it), retries waiting in backoff go at once, and every connection to the old
  master is closed, those in use included: a reply from a demoted master could acknowledge a write it is about to
  discard. Calls cut that way fail with
  :class:`~.classify.MasterChangedError` (outcome unknown; idempotent ones are re-sent to the new master), their span
  gets a ``trading_shared.master_changed`` event, and ``trading_shared.redis.master_changes`` counts the move.

What this cannot close: Redis replicates asynchronously, so writes the old master acknowledged in its last instant
before the switch may be missing on the new master. ``wait_replicas`` (WAIT after each write) or the server's
``min-replicas-to-write`` close that window (docs/redis-sentinel.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio.connection as rconn
import redis.exceptions as rex

from ..resilience.faults import RequestNotSent
from ..settings import RedisSettings
from ..telemetry.client import ClientTelemetry
from .classify import ConnectFailed, MasterNotFoundError, NotMasterError
from .connection import ON_CONNECTED, SENT, MasterCheck
from .endpoints import Endpoint, Endpoints, Key, Refresher

_log = logging.getLogger(__name__)

#: Seconds between sentinel look-ups made because the master's breaker is open (calls rejected meanwhile wait for
#: no look-up: they see the last answer).
REROUTE_INTERVAL = 0.5
#: The sentinels' channel announcing the end of a failover: ``<name> <old-ip> <old-port> <new-ip> <new-port>``.
SWITCH_CHANNEL = "+switch-master"
#: Published by the sentinel leading a failover just before it sends ``REPLICAOF NO ONE`` to the chosen replica.
PROMOTING_CHANNEL = "+failover-state-send-slaveof-noone"
#: Every channel the watchers follow: the two above and the failover aborts.
EVENT_CHANNELS = (
    SWITCH_CHANNEL,
    PROMOTING_CHANNEL,
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
)
#: Longest hold of writes between a promotion starting and the switch (a sentinel timer tick and one INFO round of
#: the promoted replica normally; longer means the failover was lost or its events were missed).
HOLD_LIMIT = 5.0
#: Check intervals without any reply (not even to PING) after which the watcher moves to the next sentinel.
SILENT_INTERVALS = 3
#: Connection arguments of the data connections that sentinel connections do not take.
_NOT_FOR_SENTINELS = ("host", "port", "password", "username", "db", "client_name", "max_connections", ON_CONNECTED)

Address = tuple[str, int]


class SentinelRouter:
    """Routes every call to the current master of ``settings.service_name``.

    ``make_endpoints`` builds the router's endpoints given the check their new connections must pass
    (:meth:`confirm`).
    """

    def __init__(
        self,
        settings: RedisSettings,
        kwargs: dict[str, Any],
        telemetry: ClientTelemetry,
        make_endpoints: Callable[[MasterCheck], Endpoints],
    ) -> None:
        assert settings.service_name is not None
        self.endpoints = make_endpoints(self.confirm)
        self._service = settings.service_name
        self._telemetry = telemetry
        self._interval = settings.sentinel_check_interval
        self._sentinels = settings.sentinel_addresses()
        password = settings.sentinel_password.get_secret_value() if settings.sentinel_password else None
        cls = kwargs["connection_class"]
        base = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_SENTINELS and k != "connection_class"}
        self._connect: Callable[[Address], rconn.AbstractConnection] = lambda address: cls(
            host=address[0], port=address[1], password=password, **base
        )
        self._connections = {address: self._connect(address) for address in self._sentinels}
        self._current: Endpoint | None = None
        self._refresher = Refresher(self._lookup)
        self._ask_lock = asyncio.Lock()
        self._answer: Address | None = None
        self._answer_since = float("-inf")  # when the look-up that gave _answer started (monotonic)
        self._watcher: asyncio.Task[None] | None = None
        self._held: tuple[Address, float] | None = None  # the master being failed over, and until when to hold
        self._event_connections: set[rconn.AbstractConnection] = set()
        self._closing = False

    @property
    def master(self) -> Endpoint | None:
        """The endpoint of the master calls go to now (None before :meth:`start`)."""
        return self._current

    async def start(self) -> None:
        """Find the master, open one connection to it (both checks included) and start watching the sentinels."""
        try:
            host, port = await self._fresh(time.monotonic())
        except MasterNotFoundError as exc:
            raise RequestNotSent(exc) from exc
        await self._switch(host, port, "start")
        assert self._current is not None
        await self._current.pools.open_one()
        self._watcher = asyncio.create_task(self._watch(), name=f"trading_shared sentinel watcher {self._service}")

    def route(self, key: Key | None) -> Endpoint:
        """The current master."""
        current = self._current
        if current is None:
            raise RuntimeError("RedisClient is not connected")
        return current

    async def confirm(self, host: str, port: int, since: float) -> None:
        """The :data:`~.connection.MasterCheck` of new connections: the sentinels must name ``host:port`` now.

        When they name another server, the client moves there and the connect fails with NotMasterError.
        """
        held = self._held
        if held is not None and held[0] == (host, port) and time.monotonic() < held[1]:
            raise NotMasterError("a failover of this master is in progress")
        answer = await self._fresh(since)
        if answer != (host, port):
            await self._switch(*answer, "connect check")
            raise NotMasterError("the sentinels name another server as the master")

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
        """Stop the watcher, close the endpoints and the sentinel connections."""
        self._closing = True
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.wait([watcher], timeout=timeout)
        await self.endpoints.close(timeout)
        for conn in self._connections.values():
            with contextlib.suppress(rex.RedisError, OSError):
                await conn.disconnect()

    # -- the master's address ----------------------------------------------------------------------------------------
    async def _lookup(self, avoid: Endpoint | None) -> None:
        await self._switch(*await self._fresh(time.monotonic()), "look-up after a failure")

    async def _fresh(self, since: float) -> Address:
        """The sentinels' answer from a look-up started at or after ``since``; one look-up serves every waiter."""
        async with self._ask_lock:
            if self._answer is not None and self._answer_since >= since:
                return self._answer
            started = time.monotonic()
            counting = SENT.set(None)  # asked from inside a call's attempt: not one of the call's requests
            try:
                answer = await self._ask()
            finally:
                SENT.reset(counting)
            if started >= self._answer_since:
                self._answer, self._answer_since = answer, started
            return answer

    async def _switch(self, host: str, port: int, how: str) -> None:
        old = self._current
        if old is not None and (old.host, old.port) == (host, port):
            return
        new = self.endpoints.get(host, port)
        new.superseded = False
        self._current = new
        if old is None:
            return
        self._held = None
        self.endpoints.nudge.wake()
        _log.warning(
            "redis sentinel service %r: master moved from %s to %s (%s)", self._service, old.name, new.name, how
        )
        new.breaker.reset()  # the sentinels vouch for it: failures of an earlier term do not count
        self._telemetry.master_changed()
        old.superseded = True
        await old.pools.disconnect_all()

    async def _ask(self) -> Address:
        """The master's address from the first sentinel that knows it; raises MasterNotFoundError."""
        failures: list[str] = []
        for index, address in enumerate(self._sentinels):
            conn = self._connections[address]
            try:
                await conn.connect()
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
                return _text(reply[0]), int(reply[1])
            failures.append("unknown service")
        raise MasterNotFoundError(
            f"no sentinel named a master for service {self._service!r} ({', '.join(failures) or 'no sentinels'})"
        )

    # -- the watchers --------------------------------------------------------------------------------------------------
    async def _watch(self) -> None:
        """Follow the failover events of every sentinel, and ask the sentinels every interval."""
        followers = [asyncio.create_task(self._follow_forever(address)) for address in list(self._sentinels)]
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self._poll()
        finally:
            for follower in followers:
                follower.cancel()
            for conn in list(self._event_connections):  # a read in progress ends even if a cancel gets lost
                with contextlib.suppress(rex.RedisError, OSError):
                    await conn.disconnect()
            await asyncio.wait(followers, timeout=1.0)

    async def _follow_forever(self, address: Address) -> None:
        while not self._closing:
            try:
                await self._follow(address)
            except (rex.RedisError, OSError, TimeoutError) as exc:
                _log.debug("redis sentinel events: %s; subscribing again", type(exc).__name__)
            await asyncio.sleep(self._interval)

    async def _follow(self, address: Address) -> None:
        """Subscribe on ``address`` and act on its events until it fails or falls silent."""
        conn = self._connect(address)
        self._event_connections.add(conn)
        try:
            await conn.connect()  # type: ignore[no-untyped-call]
            await conn.send_command("SUBSCRIBE", *EVENT_CHANNELS)
            heard = time.monotonic()
            while not self._closing:
                message = await conn.read_response(timeout=self._interval)
                now = time.monotonic()
                if message is not None:
                    heard = now
                    await self._on_event(message)
                    continue
                if now - heard > SILENT_INTERVALS * self._interval:
                    raise TimeoutError("the sentinel stopped answering")
                await conn.send_command("PING")  # its reply (a message) shows the sentinel is alive
        finally:
            self._event_connections.discard(conn)
            with contextlib.suppress(rex.RedisError, OSError):
                await conn.disconnect()

    async def _on_event(self, message: Any) -> None:
        if not isinstance(message, list) or len(message) != 3 or _text(message[0]) != "message":
            return  # a subscription's confirmation, or a PING's reply
        channel, fields = _text(message[1]), _text(message[2]).split()
        current = self._current
        if channel == SWITCH_CHANNEL:  # <name> <old-ip> <old-port> <new-ip> <new-port>
            if len(fields) == 5 and fields[0] == self._service:
                self._answer, self._answer_since = (fields[3], int(fields[4])), time.monotonic()
                self._held = None
                await self._switch(fields[3], int(fields[4]), "switch-master event")
        elif channel == PROMOTING_CHANNEL:  # slave <name> <ip> <port> @ <master-name> <master-ip> <master-port>
            promoting = len(fields) == 8 and fields[5] == self._service and self._held is None
            if promoting and current is not None and (current.host, current.port) == (fields[6], int(fields[7])):
                await self._hold(current)
        elif len(fields) >= 2 and fields[1] == self._service:  # an abort: master <name> <ip> <port>
            self._release("failover aborted")

    async def _hold(self, master: Endpoint) -> None:
        """A sentinel is promoting a replica of ``master``: write nothing more there until the switch (or abort).

        From now on the old master's acknowledgements may be of writes the new one never gets.
        """
        self._held = ((master.host, master.port), time.monotonic() + HOLD_LIMIT)
        _log.warning("redis sentinel service %r: failover of %s started, holding writes", self._service, master.name)
        master.superseded = True
        await master.pools.disconnect_all()

    def _release(self, why: str) -> None:
        held, self._held = self._held, None
        current = self._current
        if held is not None and current is not None and (current.host, current.port) == held[0]:
            _log.warning("redis sentinel service %r: %s, writing to %s again", self._service, why, current.name)
            current.superseded = False
            self.endpoints.nudge.wake()

    async def _poll(self) -> None:
        held = self._held
        if held is not None and time.monotonic() > held[1]:
            self._release(f"no switch within {HOLD_LIMIT:g} s")
        try:
            await self._switch(*await self._fresh(time.monotonic()), "periodic check")
        except (rex.RedisError, OSError) as exc:
            _log.debug("redis sentinel check failed: %s", type(exc).__name__)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

"""Cluster mode: each command goes to the master owning its key's hash slot; the client keeps the slot map itself.

Why not redis-py's ``RedisCluster``: it has a retry layer of its own (re-sending on ``ConnectionError`` /
``TimeoutError``, which re-sends non-idempotent commands whose reply was lost), closes every node connection and
sleeps 0.25 s inside a call on ``CLUSTERDOWN``, hides which node answered, and uses per-node connection lists that the
SDK's lean runner, packed bulk appends and connect-phase detection do not run on. Routing here is small: a slot
table from ``CLUSTER SLOTS``, an :class:`~.endpoints.Endpoint` (pools, breaker, pipeline) per node, and
redirections followed inside an attempt, which is safe because MOVED and ASK mean the command was NOT executed.

* The slot map is read at connect (from ``cluster_nodes``, any one reachable node is enough), again after an
  infrastructure failure of an attempt (once per burst of failures), and every :data:`WATCH_INTERVAL` seconds while a
  master's attempts keep failing, so a promotion is seen even while every call for its slots waits in backoff; a map
  that changed cuts those waits short. A MOVED reply updates its slot at once and the command is re-sent to the new
  owner; an ASK reply sends ``ASKING`` and the command to the importing node, without touching the map. At most
  :data:`MAX_REDIRECTS` hops, then :class:`~.classify.TooManyRedirects` (not applied, retried by the pipeline).
* ``TRYAGAIN`` (multi-key command during a migration), ``CLUSTERDOWN`` and ``READONLY`` (a replica answered) are
  refused-not-applied: the pipeline retries them with backoff.
* Breakers: a call counts against the breaker of the node that owned its slot when the call started. A node whose
  breaker is open rejects calls for its slots; the router then re-reads the map (at most every 0.5 s) and sends the
  call to the new owner if the slot moved (a replica promoted by the cluster), so an open breaker never outlives
  a failover. Nodes' breakers are independent: a dead node never opens another node's breaker.
* Which node a refresh asks: nodes are asked one by one until one gives a usable map. First the node whose map is
  in use, then the masters, the startup nodes and every other node known; the node whose attempt just failed after
  those; last the demoted nodes. A map is usable if it covers every slot the current map covers (at connect: every
  slot). A node that cannot be reached, answers an error (LOADING, CLUSTERDOWN, ``cluster support disabled``: not in
  cluster mode) or a smaller map (a blank node at a failed master's address answers an empty one) is demoted: asked
  last until it gives a usable map again. If no node's map is as wide as the current one, the widest non-empty map
  is used (slots removed on purpose); if none answered a map, the refresh fails and the current map stays (at
  connect: the last error is raised). Authentication and ACL errors are raised at once (configuration).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Sequence
from typing import Any

import redis.exceptions as rex
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from ..resilience.faults import RequestNotSent
from ..settings import RedisSettings
from .classify import ConnectFailed
from .connection import SENT
from .endpoints import Endpoint, Endpoints, Key, Refresher
from .pool import encode

#: Redirections (MOVED/ASK) one attempt follows before giving up.
MAX_REDIRECTS = 5
#: Seconds between slot-map look-ups made because a node's breaker is open.
REROUTE_INTERVAL = 0.5
#: While a master's attempts fail, the map is re-read every this many seconds (a promotion is seen even while every
#: call for its slots waits in backoff)...
WATCH_INTERVAL = 0.2
#: ...until it owns no slot or has not failed for this many seconds (longer than the default 2 s backoff cap).
WATCH_WINDOW = 5.0
#: Errors of a ``CLUSTER SLOTS`` look-up that are the caller's configuration: raised at once, no other node asked.
_CONFIGURATION_ERRORS = (
    rex.AuthenticationError,
    rex.AuthorizationError,
    rex.ExternalAuthProviderError,
    rex.NoPermissionError,
)
#: :meth:`CommandKeys.first_key` result for commands whose keys only the server can find (EVAL, XREAD...).
MOVABLE = object()


def slot_of(key: Key) -> int:
    """The hash slot of ``key`` (its ``{hash tag}`` if it has one)."""
    return key_slot(key if isinstance(key, bytes) else key.encode())


class ClusterRouter:
    """Routes each call to the master owning its key's slot."""

    def __init__(self, settings: RedisSettings, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._startup = [endpoints.get(host, port) for host, port in settings.cluster_addresses()]
        self._slots: list[Endpoint | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        self._masters: list[Endpoint] = []
        #: The node whose map is in use (asked first next time), and the nodes asked last (see :meth:`_demote`).
        self._answered: Endpoint | None = None
        self._demoted: dict[Endpoint, None] = {}
        self._refresher = Refresher(self._lookup)
        #: Masters whose attempts failed, with when they last did; and the task re-reading the map meanwhile.
        self._failing: dict[Endpoint, float] = {}
        self._watch: asyncio.Task[None] | None = None
        self._closing = False
        self.keys = CommandKeys()

    @property
    def masters(self) -> list[Endpoint]:
        """The masters owning slots, as last read."""
        return list(self._masters)

    async def start(self) -> None:
        """Read the slot map from the first startup node that gives a complete one (its connection stays pooled)."""
        await self._lookup(None, strict=True)

    def route(self, key: Key | None) -> Endpoint:
        """The owner of ``key``'s slot; a keyless command (or an uncovered slot) goes to the first master."""
        if key is not None:
            owner = self._slots[slot_of(key)]
            if owner is not None:
                return owner
        return self._masters[0] if self._masters else self._startup[0]

    def owner_of_slot(self, slot: int) -> Endpoint | None:
        """The endpoint the map says owns ``slot``."""
        return self._slots[slot]

    async def failed(self, endpoint: Endpoint, since: float) -> None:
        """Re-read the slot map, asking other nodes before ``endpoint`` (once per burst of failures); while it owns
        slots, keep re-reading it every :data:`WATCH_INTERVAL` seconds (see :data:`WATCH_WINDOW`)."""
        await self._refresher.refresh(since, avoid=endpoint)
        if endpoint in self._masters and not self._closing:
            self._failing[endpoint] = time.monotonic()
            if self._watch is None or self._watch.done():
                self._watch = asyncio.create_task(self._watch_failing(), context=contextvars.Context())

    def redirected(self, error: rex.AskError) -> Endpoint:
        """The node a MOVED/ASK reply names; a MOVED also moves its slot in the map."""
        target = self.endpoints.get(str(error.host), int(error.port))
        if isinstance(error, rex.MovedError):
            self._slots[int(error.slot_id)] = target
            if target not in self._masters:
                self._masters.append(target)
        return target

    async def reroute(self, key: Key | None, rejected: Endpoint) -> Endpoint | None:
        """After ``rejected``'s open breaker refused a call: re-read the map and return the slot's new owner, if any."""
        await self._refresher.refresh_if_older(REROUTE_INTERVAL)
        owner = self.route(key)
        return owner if owner is not rejected else None

    async def close(self, timeout: float) -> None:
        """Stop re-reading the map; close every node's pools."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        await self.endpoints.close(timeout)

    # -- internals -----------------------------------------------------------------------------------------------------
    async def _watch_failing(self) -> None:
        while not self._closing:
            now = time.monotonic()
            self._failing = {e: t for e, t in self._failing.items() if e in self._masters and now - t < WATCH_WINDOW}
            if not self._failing:
                return
            await asyncio.sleep(WATCH_INTERVAL)
            await self._refresher.refresh(time.monotonic(), avoid=next(iter(self._failing)))

    def _candidates(self, avoid: Endpoint | None) -> list[Endpoint]:
        """The nodes to ask, in order: the last useful answerer, the masters, the startup nodes, every other node
        known; then ``avoid``; then the demoted nodes, longest demoted first."""
        known = [*([self._answered] if self._answered else []), *self._masters, *self._startup, *self.endpoints.all()]
        late = {**({avoid: None} if avoid is not None else {}), **self._demoted}
        return [*(e for e in dict.fromkeys(known) if e not in late), *late]

    async def _lookup(self, avoid: Endpoint | None, strict: bool = False) -> None:
        counting = SENT.set(None)  # a look-up inside a call's attempt is not a request of that call
        try:
            await self._ask(avoid, strict)
        finally:
            SENT.reset(counting)

    async def _ask(self, avoid: Endpoint | None, strict: bool) -> None:
        fallback: tuple[Endpoint, list[Endpoint | None], list[Endpoint]] | None = None
        last: BaseException | None = None
        for endpoint in self._candidates(avoid):
            try:
                reply = await endpoint.pools.main.execute_command("CLUSTER SLOTS")
            except _CONFIGURATION_ERRORS:
                raise  # every node would refuse it too
            except (ConnectFailed, rex.ConnectionError, rex.TimeoutError, rex.ResponseError, OSError) as exc:
                last = exc  # unreachable, LOADING, CLUSTERDOWN, not in cluster mode...
                self._demote(endpoint)
                continue
            slots, masters = self._parse(endpoint, reply)
            if self._usable(slots):
                self._install(endpoint, slots, masters)
                return
            self._demote(endpoint)
            covered = REDIS_CLUSTER_HASH_SLOTS - slots.count(None)
            last = rex.ClusterDownError(f"CLUSTERDOWN {endpoint.name} answered a slot map of {covered} slots")
            if masters and (fallback is None or covered > REDIS_CLUSTER_HASH_SLOTS - fallback[1].count(None)):
                fallback = (endpoint, slots, masters)
        if fallback is not None:  # no node has a map as wide as ours: slots were removed on purpose
            self._install(*fallback)
            return
        if last is None:
            raise rex.ConnectionError("no cluster node to ask for the slot map")
        if strict and isinstance(last, ConnectFailed):
            raise RequestNotSent(last.original) from last.original
        raise last

    def _parse(self, asked: Endpoint, reply: Sequence[Any]) -> tuple[list[Endpoint | None], list[Endpoint]]:
        """A ``CLUSTER SLOTS`` reply as a slot table and its masters in the order listed."""
        slots: list[Endpoint | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: list[Endpoint] = []
        for entry in reply:
            start, end, master = int(entry[0]), int(entry[1]), entry[2]
            host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
            endpoint = self.endpoints.get(host or asked.host, int(master[1]))  # '' means: the node you asked
            slots[start : end + 1] = [endpoint] * (end - start + 1)
            if endpoint not in masters:
                masters.append(endpoint)
        return slots, masters

    def _usable(self, slots: list[Endpoint | None]) -> bool:
        """A map covering every slot ours covers (every slot, before the first map); never an empty one."""
        if not self._masters:
            return None not in slots
        return not any(new is None and old is not None for old, new in zip(self._slots, slots, strict=True))

    def _install(self, asked: Endpoint, slots: list[Endpoint | None], masters: list[Endpoint]) -> None:
        changed = slots != self._slots
        self._slots, self._masters = slots, masters
        if changed:
            self.endpoints.nudge.wake()  # retries waiting in backoff go to the new owners now
        self._answered = asked
        self._demoted.pop(asked, None)

    def _demote(self, endpoint: Endpoint) -> None:
        """Ask ``endpoint`` after every other node until it gives a usable map again."""
        self._demoted.pop(endpoint, None)
        self._demoted[endpoint] = None
        if self._answered is endpoint:
            self._answered = None


class CommandKeys:
    """Where a queued command's key is, from the server's ``COMMAND INFO`` (cached per command name).

    Used to group :meth:`~trading_shared.RedisClient.run_pipeline` commands by slot in cluster mode. Commands with
    movable keys (EVAL, XREAD, ...) are resolved by the server with ``COMMAND GETKEYS``.
    """

    def __init__(self) -> None:
        self._info: dict[str, tuple[int, bool, dict[str, int]]] = {}

    def missing(self, stack: Sequence[tuple[Any, ...]]) -> list[str]:
        """Command names of ``stack`` not known yet (ask ``COMMAND INFO`` for them, then :meth:`learn`)."""
        names = {words(args)[0].decode().lower() for args in stack}
        return sorted(n for n in names if n not in self._info)

    def learn(self, names: Sequence[str], info: Any) -> None:
        """Store the key positions of ``names`` from redis-py's parsed ``COMMAND INFO`` reply (unknown: keyless)."""
        found = info if isinstance(info, dict) else {}
        for name in names:
            entry = found.get(name)
            if not isinstance(entry, dict):
                self._info[name] = (0, False, {})
                continue
            subs: dict[str, int] = {}
            for sub in entry.get("subcommands") or ():
                sub_name = sub[0].decode() if isinstance(sub[0], bytes) else str(sub[0])
                subs[sub_name.partition("|")[2].lower()] = int(sub[3])
            movable = "movablekeys" in (entry.get("flags") or ())
            self._info[name] = (int(entry.get("first_key_pos") or 0), movable, subs)

    def first_key(self, args: Sequence[Any]) -> bytes | object | None:
        """The first key of a queued command, None if it has none, :data:`MOVABLE` if only the server can tell."""
        parts = words(args)
        first, movable, subs = self._info.get(parts[0].decode().lower(), (0, False, {}))
        if movable:
            return MOVABLE
        if first == 0 and subs and len(parts) > 1:
            first = subs.get(parts[1].decode(errors="replace").lower(), 0)
        return parts[first] if 0 < first < len(parts) else None


def words(args: Sequence[Any]) -> list[bytes]:
    """A queued command's arguments as bytes, its name split (redis-py queues e.g. ``"XGROUP CREATE"`` as one)."""
    head = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
    return [w.encode() for w in head.split()] + [encode(a) for a in args[1:]]

"""Command runners with a step before or after each command: ``ASKING`` (cluster ASK redirection), ``WAIT``.

* ``ASKING`` must come right before a command sent to the node a slot is being migrated to, on the same connection;
  it is sent as its own round trip (this is the rare path of a slot migration). Outside a transaction it applies
  to the next command only, so a pipeline gets one ``ASKING`` before each command; a transaction gets one before
  ``MULTI`` (the flag lasts until ``EXEC``).
* ``WAIT <replicas> <ms>`` after a write that succeeded, on the same connection, confirms that ``replicas``
  replicas have it. Fewer raises :class:`~.classify.NotReplicatedError`: the write is on the master, but a failover
  before the replicas catch up can lose it, so its outcome is unknown.

:class:`CommandSet` hands out the right runner of one :class:`~.pool.Pools` (plain, writing, asking, blocking),
built on first use; the plain ones are the pool's own :class:`~.pool.Commands`, so reads pay nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.connection as rconn

from ..telemetry.client import ClientTelemetry
from .classify import NotReplicatedError
from .connection import SENT
from .pool import BLOCK_SECONDS, Commands, Pools, QueuedCommand, _ensure_open, encode, pack, raise_first_error

#: ``(replicas, timeout in ms)`` for WAIT.
Wait = tuple[int, int]
_ASKING: QueuedCommand = (("ASKING",), {})


class BracketedCommands(Commands):
    """:class:`~.pool.Commands` that send ``ASKING`` before and/or ``WAIT`` after each command."""

    def __init__(
        self,
        pool: aioredis.ConnectionPool,
        *,
        blocking_base: float | None = None,
        asking: bool = False,
        wait: Wait | None = None,
        timing: ClientTelemetry | None = None,
    ) -> None:
        super().__init__(pool, blocking_base=blocking_base, timing=timing)
        self.ask_first = asking
        self.confirm_with = wait

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command (ASKING first, WAIT after when configured) and return its reply."""
        pool = self.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await self._prepare(conn)
            if self.ask_first:
                await self._asking(conn)
            await conn.send_command(*args)
            reply = await self.parse_response(conn, args[0], **options)
            if self.confirm_with is not None:
                await self._confirm(conn)
            return reply
        finally:
            await pool.release(conn)

    async def execute_packed(self, name: str, head: Sequence[Any], body: bytes, body_args: int) -> Any:
        """Like :meth:`Commands.execute_packed <.pool.Commands.execute_packed>`, bracketed."""
        async with self.borrow() as conn:
            await self._prepare(conn)
            if self.ask_first:
                await self._asking(conn)
            args = [name, *head]
            header = b"*%d\r\n" % (len(args) + body_args) + pack([encode(a) for a in args])
            await conn.send_packed_command([header, body])
            reply = await self.parse_response(conn, name)
            if self.confirm_with is not None:
                await self._confirm(conn)
            return reply

    async def execute_stack(
        self, stack: Sequence[QueuedCommand], *, transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Like :meth:`Commands.execute_stack <.pool.Commands.execute_stack>`, bracketed (WAIT once, at the end)."""
        async with self.borrow() as conn:
            await self._prepare(conn)
            if self.ask_first and not transaction:
                interleaved = [item for command in stack for item in (_ASKING, command)]
                replies = (await self._run_stack(conn, interleaved, False))[1::2]
            else:
                if self.ask_first:
                    await self._asking(conn)
                replies = await self._run_stack(conn, stack, transaction)
            if self.confirm_with is not None:
                await self._confirm(conn)
        if raise_on_error:
            raise_first_error(replies)
        return replies

    async def _prepare(self, conn: rconn.Connection) -> None:
        await _ensure_open(conn)
        if self.blocking_base is not None:
            conn.socket_timeout = self.blocking_base + BLOCK_SECONDS.get()

    async def _asking(self, conn: rconn.Connection) -> None:
        token = SENT.set(None)  # applies nothing: not a request of the attempt
        try:
            await conn.send_command("ASKING")
        finally:
            SENT.reset(token)
        await self.parse_response(conn, "ASKING")

    async def _confirm(self, conn: rconn.Connection) -> None:
        assert self.confirm_with is not None
        replicas, timeout_ms = self.confirm_with
        token = SENT.set(None)  # applies nothing: not a request of the attempt
        try:
            await conn.send_command("WAIT", replicas, timeout_ms)
        finally:
            SENT.reset(token)
        confirmed = int(await self.parse_response(conn, "WAIT"))
        if confirmed < replicas:
            raise NotReplicatedError(confirmed, replicas)


class CommandSet:
    """The runners of one :class:`~.pool.Pools`: plain and blocking ones are the pool's own; others built once."""

    def __init__(self, pools: Pools, wait: Wait | None) -> None:
        self.pools = pools
        self._wait = wait
        self._built: dict[tuple[bool, bool, bool], Commands] = {}

    def get(self, *, write: bool = False, asking: bool = False, blocking: bool = False) -> Commands:
        """The runner for a write (WAIT after it when configured), after ASK, and/or on the blocking pool."""
        wait = self._wait if write else None
        if wait is None and not asking:
            return self.pools.blocking() if blocking else self.pools.main
        key = (wait is not None, asking, blocking)
        found = self._built.get(key)
        if found is None:
            base = self.pools.blocking() if blocking else self.pools.main
            found = BracketedCommands(
                base.connection_pool, blocking_base=base.blocking_base, asking=asking, wait=wait, timing=base.timing
            )
            self._built[key] = found
        return found

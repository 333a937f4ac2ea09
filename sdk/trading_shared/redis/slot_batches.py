"""``run_pipeline`` in cluster mode: the queued commands grouped by hash slot, one round trip per group.

* Each command's key is found from the server's key specs (``COMMAND INFO``, cached per command name; commands
  with movable keys such as EVAL or XREAD are asked with one ``COMMAND GETKEYS`` round trip for all of them).
  Commands without a key ride with the first group.
* Groups run concurrently, each as one call through its node's pipeline (breaker, retries, deadline), and the
  replies come back in the order the commands were queued. A pipeline is NOT atomic across slots: when one group
  fails, its error is raised after the other groups finished, and theirs may have been applied.
* ``transaction=True`` needs every key in one slot (give them one ``{hash tag}``): otherwise ValueError, before
  anything is sent. MULTI/EXEC then runs on the slot's owner like on a single server.
* Outside a transaction, commands answered with MOVED or ASK (not executed: their slot moved, or is being
  migrated and their key is already on the importing node) are re-sent to the node named, with ``ASKING`` after
  an ASK, up to :data:`~.cluster.MAX_REDIRECTS` times, and their replies put in place: they run after the other
  commands of their group. A transaction answered with MOVED/ASK is re-sent whole (nothing of it ran). If such a
  re-send fails, the group is half applied: its outcome is unknown (re-sent only when ``idempotent``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import redis.exceptions as rex

from ..resilience.faults import PartlyApplied
from .classify import ConnectFailed
from .cluster import MAX_REDIRECTS, MOVABLE, ClusterRouter, slot_of, words
from .endpoints import Key
from .pool import Commands, QueuedCommand, raise_first_error


class Call(Protocol):
    """The client's ``_call``."""

    def __call__(
        self,
        operation: str,
        fn: Callable[[Commands], Awaitable[Any]],
        *,
        idempotent: bool,
        key: Key | None = None,
        write: bool = False,
    ) -> Awaitable[Any]:
        """Run ``fn`` through the pipeline of the endpoint owning ``key``."""


async def run_by_slot(
    call: Call,
    router: ClusterRouter,
    stack: Sequence[QueuedCommand],
    *,
    operation: str,
    transaction: bool,
    idempotent: bool,
    raise_on_error: bool,
    write: bool,
) -> list[Any]:
    """Run ``stack`` grouped by slot; replies in queued order."""
    firsts = await _first_keys(call, router, stack)
    groups: dict[int, list[int]] = {}
    keyless: list[int] = []
    for index, key in enumerate(firsts):
        if key is None:
            keyless.append(index)
        else:
            groups.setdefault(slot_of(key), []).append(index)
    if transaction and len(groups) > 1:
        raise ValueError(
            "cluster mode: a transaction's keys must all be in one hash slot (give them the same {hash tag})"
        )
    plan: list[tuple[Key | None, list[int]]] = [(firsts[idx[0]], idx) for idx in groups.values()]
    if not plan:
        plan = [(None, keyless)]
    elif keyless:
        key0, first = plan[0]
        plan[0] = (key0, sorted(first + keyless))

    async def run_group(key: Key | None, indexes: list[int]) -> list[Any]:
        sub = [stack[i] for i in indexes]

        async def send(r: Commands) -> list[Any]:
            replies = await r.execute_stack(sub, transaction=transaction, raise_on_error=False)
            await _follow_redirections(router, sub, replies, write)
            return replies

        result: list[Any] = await call(operation, send, idempotent=idempotent, key=key, write=write)
        return result

    outcomes = await asyncio.gather(*(run_group(k, idx) for k, idx in plan), return_exceptions=True)
    replies: list[Any] = [None] * len(stack)
    for (_, indexes), outcome in zip(plan, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            raise outcome
        for index, reply in zip(indexes, outcome, strict=True):
            replies[index] = reply
    if raise_on_error:
        raise_first_error(replies)
    return replies


async def _first_keys(call: Call, router: ClusterRouter, stack: Sequence[QueuedCommand]) -> list[Key | None]:
    keys = router.keys
    missing = keys.missing([args for args, _ in stack])
    if missing:
        info = await call("COMMAND", lambda r: r.execute_command("COMMAND", "INFO", *missing), idempotent=True)
        keys.learn(missing, info)
    firsts = [keys.first_key(args) for args, _ in stack]
    movable = [i for i, k in enumerate(firsts) if k is MOVABLE]
    if movable:
        asks: list[QueuedCommand] = [(("COMMAND GETKEYS", *words(stack[i][0])), {}) for i in movable]
        found = await call(
            "COMMAND",
            lambda r: r.execute_stack(asks, transaction=False, raise_on_error=False),
            idempotent=True,
        )
        for index, reply in zip(movable, found, strict=True):
            firsts[index] = reply[0] if isinstance(reply, list) and reply else None  # an error reply: no key
    return [k if isinstance(k, str | bytes) else None for k in firsts]


async def _follow_redirections(
    router: ClusterRouter, sub: Sequence[QueuedCommand], replies: list[Any], write: bool
) -> None:
    """Re-send the commands answered with MOVED/ASK (they did not run) to the node named; replies in place."""
    for _ in range(MAX_REDIRECTS):
        targets: dict[tuple[bool, str, int], list[int]] = {}
        for index, reply in enumerate(replies):
            if isinstance(reply, rex.AskError):  # MovedError is a subclass
                moved = isinstance(reply, rex.MovedError)
                targets.setdefault((moved, str(reply.host), int(reply.port)), []).append(index)
        if not targets:
            return
        for (moved, _, _), indexes in targets.items():
            endpoint = router.redirected(replies[indexes[0]])
            runner = endpoint.commands.get(write=write, asking=not moved)
            try:
                again = await runner.execute_stack([sub[i] for i in indexes], transaction=False, raise_on_error=False)
            except ConnectFailed as exc:  # the rest of the group ran: even "not sent" here leaves it half applied
                raise PartlyApplied(exc.original) from exc.original
            except Exception as exc:
                raise PartlyApplied(exc) from exc
            for index, reply in zip(indexes, again, strict=True):
                replies[index] = reply

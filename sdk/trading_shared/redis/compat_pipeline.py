"""``RedisClient.pipeline()``: redis-py's pipeline API, executed through the SDK's pipeline machinery.

Commands are queued exactly as on a ``redis.asyncio`` pipeline (``pipe.hset(...)``, chained or awaited: queuing
returns the pipeline, and awaiting a pipeline gives the pipeline back). :meth:`CompatPipeline.execute` hands the
queued commands to :meth:`~trading_shared.RedisClient.run_pipeline`: one round trip (MULTI/EXEC when the pipeline
is a transaction), through the breaker, retries, deadline, span and metrics. It is re-sent after a lost reply only
when every queued command is idempotent per :mod:`.commands_table`; otherwise such a failure raises
:class:`~trading_shared.errors.OutcomeUnknownError`. WATCH is not supported (no optimistic locking across calls).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

import redis.asyncio as aioredis
import redis.asyncio.client as rclient

from .commands_table import stack_idempotent

#: ``run_pipeline(build, transaction=, idempotent=, raise_on_error=)`` of the client.
RunPipeline = Callable[..., Coroutine[Any, Any, list[Any]]]


class CompatPipeline(rclient.Pipeline):
    """A redis-py ``Pipeline`` whose ``execute()`` goes through the SDK (see the module docstring)."""

    def __init__(self, run_pipeline: RunPipeline, transaction: bool) -> None:
        super().__init__(
            connection_pool=cast(aioredis.ConnectionPool, None),  # never used: nothing is sent from here
            response_callbacks={},
            transaction=transaction,
            shard_hint=None,
        )
        self._run_pipeline = run_pipeline

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Queue one command (WATCH is refused: it would need a connection held across calls)."""
        if args and str(args[0]).upper() == "WATCH":
            raise NotImplementedError("WATCH is not supported by RedisClient.pipeline()")
        return self.pipeline_execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands in one round trip and return their replies in order; the queue is emptied.

        With ``raise_on_error`` the first error reply is raised (the driver's own ``ResponseError``); otherwise
        error replies are returned in place.
        """
        stack = [(tuple(args), dict(options)) for args, options in self.command_stack]
        self.command_stack = []
        if not stack:
            return []

        def build(recorder: rclient.Pipeline) -> None:
            recorder.command_stack.extend(stack)

        return await self._run_pipeline(
            build,
            transaction=self.is_transaction,
            idempotent=stack_idempotent(stack),
            raise_on_error=raise_on_error,
        )

    async def reset(self) -> None:  # type: ignore[override]
        """Drop the queued commands (no connection is held between calls)."""
        self.command_stack = []
        self.scripts = set()
        self.watching = False
        self.explicit_transaction = False

"""One way to own a service's clients: connect them together, close them all, whatever happens.

Run-once tasks (a janitor) use :class:`Resources`::

    async with Resources(PostgresClient(), RedisClient()) as (pg, redis):
        await pg.bulk_upsert_instruments(instruments, "deribit")

Daemons hand their coroutine function(s) and clients to :func:`run_service` (see :mod:`trading_shared.service`),
which adds signal handling and an exit code on top of :class:`Resources`.

Anything with ``async connect()`` and ``async close()`` is a :class:`ManagedClient`: the SDK's clients, and also
your own (a websocket feed, an HTTP session wrapper).

Guarantees of :class:`Resources`:

* ``connect()`` runs concurrently for every client. If one fails (or the caller is cancelled meanwhile), the
  connects still running are cancelled, every client whose connect was started is closed, and the original error
  is raised.
* On leaving the block (normally, on an error or on cancellation), every client is closed in REVERSE order,
  each one even if an earlier close failed. A close is bounded by ``close_timeout`` and shielded from a second
  cancellation, so a service being cancelled still releases its connections.
* Close errors are logged, never raised: they cannot mask the error that ended the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Iterator
from types import TracebackType
from typing import Generic, Protocol, TypeVarTuple, runtime_checkable

_log = logging.getLogger(__name__)

Ts = TypeVarTuple("Ts")


@runtime_checkable
class ManagedClient(Protocol):
    """A client :class:`Resources` can own: ``connect()`` opens it, ``close()`` releases it.

    ``close()`` should be idempotent and safe on a client whose ``connect()`` failed or was cancelled (the SDK's
    clients are); an error it raises is logged and ignored.
    """

    def connect(self) -> Awaitable[object]:
        """Open the client's connections (a coroutine)."""
        ...

    def close(self) -> Awaitable[object]:
        """Release the client's connections (a coroutine)."""
        ...


def _name(client: object) -> str:
    return type(client).__name__


class Resources(Generic[*Ts]):
    """An async context manager that connects the given clients and closes them in reverse order.

    ``async with Resources(pg, redis) as (pg, redis):`` gives back the clients, connected, as a tuple. A
    :class:`Resources` is itself a :class:`ManagedClient` (``connect()`` / ``close()``), so groups nest. It can be
    entered again after it has been closed.

    Args:
        clients: the clients, in dependency order: closed last-to-first.
        close_timeout: seconds one client's ``close()`` may take before it is abandoned (logged); ``None`` waits.
    """

    def __init__(self, *clients: *Ts, close_timeout: float | None = 30.0) -> None:
        for client in clients:
            if not isinstance(client, ManagedClient):
                raise TypeError(f"{_name(client)} has no async connect() and close(): it cannot be managed")
        self.clients: tuple[*Ts] = clients
        self.close_timeout = close_timeout
        self._opened: list[ManagedClient] = []

    def __repr__(self) -> str:
        names = ", ".join(_name(c) for c in self._managed())
        return f"<Resources [{names}] {'open' if self._opened else 'closed'}>"

    def _managed(self) -> Iterator[ManagedClient]:
        for client in self.clients:
            assert isinstance(client, ManagedClient)
            yield client

    async def connect(self) -> tuple[*Ts]:
        """Connect every client concurrently; on any failure close those started and raise the first error.

        Raises:
            Exception: the first connect error, unchanged (e.g. ``ServiceUnavailableError``); also
            ``CancelledError`` if the caller was cancelled. No client is left open in either case.
        """
        if self._opened:
            raise RuntimeError("Resources are already connected: close() them first")
        clients = list(self._managed())
        self._opened = clients  # every client whose connect is started gets closed
        tasks = [asyncio.ensure_future(client.connect()) for client in clients]
        try:
            if tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
                failed = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
                if failed:
                    failure = failed[0].exception()
                    assert failure is not None
                    # type only: a driver's message can quote a parameter; the exception itself is raised
                    _log.error(
                        "connect failed for %s: %s", _name(clients[tasks.index(failed[0])]), type(failure).__qualname__
                    )
                    raise failure
        except BaseException:
            for task in tasks:
                task.cancel()
            await _settle(asyncio.gather(*tasks, return_exceptions=True))
            await self.close()
            raise
        _log.debug("connected %s", ", ".join(_name(c) for c in clients))
        return self.clients

    async def close(self) -> None:
        """Close every connected client in reverse order; errors are logged. Idempotent; completes when cancelled.

        A cancellation that arrives while closing is re-raised once every client has been closed.
        """
        opened, self._opened = self._opened, []
        if opened:
            await _settle(self._close_all(opened))

    async def _close_all(self, clients: list[ManagedClient]) -> None:
        for client in reversed(clients):
            try:
                async with asyncio.timeout(self.close_timeout):
                    await client.close()
            except TimeoutError:
                _log.error("close of %s did not finish within %ss: abandoned", _name(client), self.close_timeout)
            except Exception:
                _log.exception("close of %s failed (ignored)", _name(client))

    async def __aenter__(self) -> tuple[*Ts]:
        return await self.connect()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _settle(awaitable: Awaitable[object]) -> None:
    """Await ``awaitable`` to completion even if the caller is cancelled meanwhile; then re-raise the cancellation."""
    task = asyncio.ensure_future(awaitable)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    with contextlib.suppress(asyncio.CancelledError):
        task.result()
    if cancelled:
        raise asyncio.CancelledError


__all__ = ["ManagedClient", "Resources"]

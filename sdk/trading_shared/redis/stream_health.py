"""Stream health: lag, pending count and oldest pending age of the consumer groups a client observes.

Metric collection callbacks are synchronous and may run on the exporter's thread, so they never talk to Redis.
Each collection reads the figures cached by the last refresh and asks the client's event loop (thread-safely) for a
new refresh, which runs as a task there: one round trip per observed stream (``XINFO GROUPS`` and one ``XPENDING``
summary per observed group, pipelined), bounded by ``stream_health_timeout``, at most one refresh in flight. So the
figures are one collection interval old, Redis sees one round trip per stream per collection (none when nothing
collects), and a dead server costs the callback nothing: its refresh fails or times out in the background, and
figures older than ``stream_health_max_age`` are no longer exported (the series go absent rather than stay flat).
:meth:`StreamHealthMonitor.refresh` reads them at once (tests, or a service's own schedule).

The refresh goes through the client's pipeline (breaker, deadline, routing in cluster mode) under the operation name
``XINFO GROUPS`` with its span suppressed: a background poll would otherwise start a trace every collection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry.trace import SpanKind

from ..settings import RedisSettings
from ..telemetry import names
from ..telemetry.client import SPAN_SHAPE, SpanShape
from ..telemetry.instruments import StreamHealth
from .pool import Commands
from .stream_tracing import StreamNames
from .streams import as_key, entry_time_ms

_log = logging.getLogger(__name__)

#: The client's call: ``(operation, key, fn)``, through the pipeline.
Call = Callable[[str, bytes, Callable[[Commands], Awaitable[Any]]], Awaitable[Any]]

OPERATION = "XINFO GROUPS"
#: Requests for a refresh closer together than this are one (the three gauges of one collection each ask).
_MIN_GAP = 0.5


class StreamHealthMonitor:
    """The observed ``(stream, group)`` pairs of one client and their last figures."""

    def __init__(self, call: Call, settings: RedisSettings, stream_names: StreamNames) -> None:
        self._call = call
        self._timeout = settings.stream_health_timeout
        self._max_age = settings.stream_health_max_age
        self._names = stream_names
        self._groups: dict[bytes, list[bytes]] = {}
        #: (stream, group) -> (monotonic time read, figures). Replaced, never changed in place: the exporter's
        #: thread iterates it.
        self._figures: dict[tuple[bytes, bytes], tuple[float, StreamHealth]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._requested = 0.0
        self._closed = False

    def observe(self, stream: str | bytes, group: str | bytes) -> None:
        """Add ``(stream, group)``; remembers the running event loop, where refreshes will run."""
        key, group_key = as_key(stream), as_key(group)
        groups = self._groups.setdefault(key, [])
        if group_key not in groups:
            groups.append(group_key)
        self._closed = False
        with contextlib.suppress(RuntimeError):  # declared before the loop runs: connect or refresh sets it
            self._loop = asyncio.get_running_loop()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run refreshes on ``loop`` (the loop the client connected on)."""
        self._loop = loop
        self._closed = False

    @property
    def observed(self) -> list[tuple[bytes, bytes]]:
        """Every observed ``(stream, group)``."""
        return [(s, g) for s, groups in self._groups.items() for g in groups]

    def snapshot(self) -> list[StreamHealth]:
        """The figures not older than ``stream_health_max_age``; asks for a refresh. Any thread; never blocks."""
        if not self._groups:
            return []
        self._request()
        oldest = time.monotonic() - self._max_age
        return [health for read, health in self._figures.values() if read >= oldest]

    def _request(self) -> None:
        loop = self._loop
        if loop is None or self._closed or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        now = time.monotonic()
        if self._closed or (self._task is not None and not self._task.done()) or now - self._requested < _MIN_GAP:
            return
        self._requested = now
        self._task = asyncio.get_running_loop().create_task(self._refresh_quietly())

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except Exception:
            _log.debug("stream health refresh failed", exc_info=True)

    async def refresh(self) -> None:
        """Read every observed stream's figures now (one round trip per stream, concurrently), each bounded by
        ``stream_health_timeout``; a stream that cannot be read keeps its last figures until they age out."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        await asyncio.gather(*(self._refresh_stream(s, list(g)) for s, g in list(self._groups.items())))

    async def _refresh_stream(self, stream: bytes, groups: list[bytes]) -> None:
        stack: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((OPERATION, stream), {})]
        stack += [(("XPENDING", stream, g), {}) for g in groups]

        async def read(r: Commands) -> list[Any]:
            return await r.execute_stack(stack, transaction=False, raise_on_error=False)

        token = SPAN_SHAPE.set(SpanShape(OPERATION, "", SpanKind.CLIENT, {}, suppress=True))
        try:
            async with asyncio.timeout(self._timeout):
                replies = await self._call(OPERATION, stream, read)
        except Exception:
            _log.debug("stream health of one stream unavailable", exc_info=True)
            return
        finally:
            SPAN_SHAPE.reset(token)
        self._store(stream, groups, replies, time.monotonic(), time.time() * 1000)

    def _store(self, stream: bytes, groups: list[bytes], replies: list[Any], read: float, now_ms: float) -> None:
        info = replies[0]
        if isinstance(info, Exception):
            return  # no such stream (yet): nothing to report
        by_name = {as_key(g.get("name", b"")): g for g in info if isinstance(g, dict)}
        figures = dict(self._figures)
        for group, pending in zip(groups, replies[1:], strict=True):
            found = by_name.get(group)
            if found is None or isinstance(pending, Exception):
                figures.pop((stream, group), None)  # the group does not exist (any more)
                continue
            lag = found.get("lag")
            oldest = entry_time_ms(pending.get("min") or b"") if isinstance(pending, dict) else None
            count = int(found.get("pending") or 0)
            age = max(0.0, (now_ms - oldest) / 1000) if oldest is not None and count else 0.0
            attrs = {
                names.MESSAGING_SYSTEM: names.SYSTEM_REDIS,
                names.MESSAGING_DESTINATION_NAME: self._names.name(stream),
                names.MESSAGING_CONSUMER_GROUP_NAME: self._names.group_name(stream, group),
            }
            health = StreamHealth(attrs, None if lag is None else int(lag), count, age)
            figures[(stream, group)] = (read, health)
        self._figures = figures

    async def close(self) -> None:
        """Stop refreshing (a refresh in flight is cancelled); the figures are dropped."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._figures = {}

"""FaultProxy: an asyncio TCP proxy with run-time switchable network faults, for resilience tests.

It runs in the test's event loop and is built on protocols and timer callbacks: the only tasks it
creates are the upstream connection attempts, all tracked and cancelled by :meth:`FaultProxy.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import socket
import struct
from collections import deque
from collections.abc import Callable

_LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, timeout 0: close() sends RST instead of FIN
_HIGH_WATER = 256 * 1024  # bytes held per direction (latency queue) before the source stops being read
_EPSILON = 0.001
_DELAYED_CAP = 4 * 1024 * 1024  # bytes of delayed client chunks kept for inspection (FaultProxy.delayed_requests)


class ProxyMode(enum.Enum):
    """The fault a :class:`FaultProxy` currently injects."""

    PASS_THROUGH = "pass_through"
    LATENCY = "latency"
    BLACKHOLE = "blackhole"
    RESET = "reset"
    LOSE_NEXT_REPLY = "lose_next_reply"


@dataclasses.dataclass
class ProxyStats:
    """Counters of a :class:`FaultProxy` (``FaultProxy.stats`` returns a snapshot)."""

    connections_accepted: int = 0
    connections_active: int = 0
    connections_reset: int = 0
    replies_lost: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0


def _abort_with_rst(transport: asyncio.Transport | None) -> None:
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    transport.abort()


class _Pipe:
    """One direction of a proxied connection: an ordered queue of (due time, chunk or None for EOF)."""

    def __init__(self, link: _Link, to_server: bool) -> None:
        self.link = link
        self.to_server = to_server
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.dest_full = False
        self.timer: asyncio.TimerHandle | None = None

    @property
    def dest(self) -> asyncio.Transport | None:
        return self.link.upstream if self.to_server else self.link.client

    def feed(self, data: bytes | None) -> None:
        proxy = self.link.proxy
        due = proxy.loop.time() + (proxy.delay if proxy.mode is ProxyMode.LATENCY else 0.0)
        if self.queue:
            due = max(due, self.queue[-1][0])  # never reorder when the latency is lowered
        self.queue.append((due, data))
        self.queued += len(data or b"")
        self.flush()

    def flush(self) -> None:
        self.cancel_timer()
        proxy, dest = self.link.proxy, self.dest
        if proxy.mode is ProxyMode.BLACKHOLE or dest is None or self.link.closed:
            return
        now = proxy.loop.time() + _EPSILON
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            if data is None:
                self.link.close()
                return
            self.queued -= len(data)
            if not dest.is_closing():
                dest.write(data)
                proxy._count(self.to_server, len(data))
        if self.queue:
            self.timer = proxy.loop.call_at(self.queue[0][0], self.flush)
        self.link.update_reading()

    def cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def clear(self) -> None:
        self.cancel_timer()
        self.queue.clear()
        self.queued = 0


class _Link:
    """A client connection to the proxy and its upstream connection."""

    def __init__(self, proxy: FaultProxy, client: asyncio.Transport) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: asyncio.Transport | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.to_server = _Pipe(self, to_server=True)
        self.to_client = _Pipe(self, to_server=False)
        self.closed = False
        self.lose_reply = False
        self.reply_match: bytes | None = None  # drop the first server chunk containing this (None: the next one)
        self.cut = bytearray()  # client bytes forwarded since the chunk whose reply is to be lost
        self.client_lost = False
        self.upstream_lost = False

    def update_reading(self) -> None:
        if self.closed:
            return
        stalled = self.proxy.mode is ProxyMode.BLACKHOLE
        self._set_reading(
            self.client,
            not stalled
            and self.upstream is not None
            and not self.to_server.dest_full
            and self.to_server.queued < _HIGH_WATER,
        )
        if self.upstream is not None:
            self._set_reading(
                self.upstream, not stalled and not self.to_client.dest_full and self.to_client.queued < _HIGH_WATER
            )

    @staticmethod
    def _set_reading(transport: asyncio.Transport, want: bool) -> None:
        if transport.is_closing() or transport.is_reading() == want:
            return
        if want:
            transport.resume_reading()
        else:
            transport.pause_reading()

    def wake(self) -> None:
        """Re-evaluate after a mode change: connect held connections, flush queues, resume reading."""
        if self.closed:
            return
        if self.upstream is None and self.connect_task is None and self.proxy.mode is not ProxyMode.BLACKHOLE:
            self.proxy._connect_upstream(self)
        self.to_server.flush()
        self.to_client.flush()
        self.update_reading()

    def close(self) -> None:
        """Graceful close of both sides (pending writes are flushed, then FIN)."""
        if self.closed:
            return
        self._shutdown()
        for transport in (self.client, self.upstream):
            if transport is not None:
                transport.close()

    def abort(self, rst: bool = True) -> None:
        """Immediate close of both sides, with a TCP RST if ``rst``."""
        self._shutdown()
        for transport in (self.client, self.upstream):
            if rst:
                _abort_with_rst(transport)
            elif transport is not None:
                transport.abort()

    def _shutdown(self) -> None:
        self.closed = True
        self.to_server.clear()
        self.to_client.clear()
        if self.connect_task is not None:
            self.connect_task.cancel()

    @property
    def finished(self) -> bool:
        return (
            self.client_lost
            and (self.upstream is None or self.upstream_lost)
            and (self.connect_task is None or self.connect_task.done())
        )


class _ClientSide(asyncio.Protocol):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.link: _Link | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.link = self.proxy._accept(transport)

    def data_received(self, data: bytes) -> None:
        assert self.link is not None
        self.proxy._from_client(self.link, data)

    def eof_received(self) -> bool:
        assert self.link is not None
        self.link.to_server.feed(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        assert self.link is not None
        self.link.client_lost = True
        if self.link.upstream is None:
            self.link.close()  # never connected upstream (held or connecting): nothing to flush
        elif not self.link.closed:
            self.link.to_server.feed(None)
        self.proxy._forget_if_finished(self.link)

    def pause_writing(self) -> None:
        assert self.link is not None
        self.link.to_client.dest_full = True
        self.link.update_reading()

    def resume_writing(self) -> None:
        assert self.link is not None
        self.link.to_client.dest_full = False
        self.link.update_reading()


class _UpstreamSide(asyncio.Protocol):
    def __init__(self, link: _Link) -> None:
        self.link = link

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        link = self.link
        link.upstream = transport
        if link.closed or link.proxy.mode is ProxyMode.RESET:
            link.abort()
            return
        link.to_server.flush()
        link.update_reading()

    def data_received(self, data: bytes) -> None:
        self.link.proxy._from_server(self.link, data)

    def eof_received(self) -> bool:
        self.link.to_client.feed(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.upstream_lost = True
        if not self.link.closed:
            self.link.to_client.feed(None)
        self.link.proxy._forget_if_finished(self.link)

    def pause_writing(self) -> None:
        self.link.to_server.dest_full = True
        self.link.update_reading()

    def resume_writing(self) -> None:
        self.link.to_server.dest_full = False
        self.link.update_reading()


class FaultProxy:
    """TCP proxy on 127.0.0.1 in front of one target, with faults switchable at run time.

    Modes (each call replaces the previous mode):

    - :meth:`pass_through`: forward everything (the initial mode).
    - :meth:`latency`: delay every chunk, both ways, by ``seconds`` (order kept).
    - :meth:`blackhole`: forward nothing and stop reading (kernel buffers fill, like a stalled network);
      new connections are accepted but not connected upstream. Nothing is dropped: when the mode changes,
      held bytes flow and held connections are connected, like a healed partition.
    - :meth:`reset`: abort all connections with a TCP RST and reset new ones at once until the mode changes.
    - :meth:`lose_next_reply`: the next client chunk (on any connection) is forwarded; when the server's
      reply arrives it is dropped and both sides are reset. The server applied the request, the client gets
      a connection error. One-shot: the mode goes back to pass-through once the chunk is forwarded.
      Arm it only after the client has connected (drivers send handshake chunks on connect). With ``match``,
      the chunk is the next one that contains those bytes (others pass); :attr:`FaultProxy.lost_requests` keeps,
      per lost reply, the client bytes the server had received for it (so a test can tell which write it hit).
      :attr:`FaultProxy.delayed_requests` likewise keeps the client chunks held back in latency mode.

    If the target refuses a connection, the client connection is reset. Use as
    ``proxy = await FaultProxy.start(host, port)`` ... ``await proxy.close()``, or ``async with``.
    """

    host = "127.0.0.1"

    def __init__(self, target_host: str, target_port: int, *, connect_timeout: float = 10.0) -> None:
        self.target = (target_host, target_port)
        self.connect_timeout = connect_timeout
        self.loop = asyncio.get_running_loop()
        self.mode = ProxyMode.PASS_THROUGH
        self.delay = 0.0
        self.match: bytes | None = None
        self.reply_match: bytes | None = None
        #: Per lost reply (:meth:`lose_next_reply`), the client bytes sent on that connection from the armed chunk
        #: until the reply was dropped: the request(s) the server got and answered, whose answer never arrived.
        self.lost_requests: list[bytes] = []
        #: Client chunks forwarded in latency mode, with the delay each got (the first 4 MiB of them).
        self.delayed_requests: list[tuple[float, bytes]] = []
        self._delayed_bytes = 0
        self._server: asyncio.Server | None = None
        self._port = 0
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = ProxyStats()
        self._closed = False

    @classmethod
    async def start(cls, target_host: str, target_port: int, *, connect_timeout: float = 10.0) -> FaultProxy:
        """Listen on a free 127.0.0.1 port and proxy to ``target_host:target_port``."""
        proxy = cls(target_host, target_port, connect_timeout=connect_timeout)
        proxy._server = await proxy.loop.create_server(lambda: _ClientSide(proxy), cls.host, 0)
        proxy._port = proxy._server.sockets[0].getsockname()[1]
        return proxy

    @property
    def port(self) -> int:
        """The port the proxy listens (or listened) on."""
        return self._port

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats, connections_active=sum(not lk.closed for lk in self._links))

    # ------------------------------------------------------------------ modes

    def pass_through(self) -> None:
        """Forward everything (also releases a blackhole and disarms :meth:`lose_next_reply`)."""
        self._set_mode(ProxyMode.PASS_THROUGH)

    def latency(self, seconds: float) -> None:
        """Delay each chunk in both directions by ``seconds``."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._set_mode(ProxyMode.LATENCY, seconds)

    def blackhole(self) -> None:
        """Forward nothing, keep connections open, accept new ones without connecting them upstream."""
        self._set_mode(ProxyMode.BLACKHOLE)

    def reset(self) -> None:
        """Abort all connections with RST, and reset new ones, until the mode changes."""
        self._set_mode(ProxyMode.RESET)

    def lose_next_reply(self, match: bytes | None = None, reply_match: bytes | None = None) -> None:
        """Forward the next client chunk (the next one containing ``match``, if given), then drop the server's reply
        and reset that connection (one-shot). With ``reply_match`` the server chunks before the first one that
        contains it are forwarded, and that one is dropped (e.g. the CommandComplete of a long COPY)."""
        self._set_mode(ProxyMode.LOSE_NEXT_REPLY, match=match)
        self.reply_match = reply_match

    def _set_mode(self, mode: ProxyMode, delay: float = 0.0, match: bytes | None = None) -> None:
        if self._closed:
            raise RuntimeError("proxy is closed")
        self.mode, self.delay, self.match, self.reply_match = mode, delay, match, None
        for link in list(self._links):
            if link.closed:
                continue
            if mode is ProxyMode.RESET:
                self._stats.connections_reset += 1
                link.abort()
            else:
                link.wake()

    # ------------------------------------------------------------------ lifecycle

    async def close(self) -> None:
        """Stop listening, abort every connection, cancel and await every task. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.abort(rst=False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        for _ in range(20):  # let the transports run connection_lost (they close their sockets there)
            if not self._links:
                break
            await asyncio.sleep(0)

    async def __aenter__(self) -> FaultProxy:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ callbacks from the protocols

    def _accept(self, transport: asyncio.Transport) -> _Link:
        """A client connected to the proxy."""
        self._stats.connections_accepted += 1
        link = _Link(self, transport)
        self._links.add(link)
        if self._closed or self.mode is ProxyMode.RESET:
            self._stats.connections_reset += 1
            link.abort()
            return link
        transport.pause_reading()  # until the upstream connection exists
        if self.mode is not ProxyMode.BLACKHOLE:
            self._connect_upstream(link)
        return link

    def _connect_upstream(self, link: _Link) -> None:
        """Start (and track) the upstream connection attempt of ``link``."""
        task = self.loop.create_task(self._open_upstream(link))
        link.connect_task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done(link))

    def _task_done(self, link: _Link) -> Callable[[asyncio.Task[None]], None]:
        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            self._forget_if_finished(link)

        return done

    async def _open_upstream(self, link: _Link) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout):
                await self.loop.create_connection(lambda: _UpstreamSide(link), *self.target)
        except (OSError, TimeoutError):
            if not link.closed:
                link.abort()  # the client sees a reset, the closest thing to "connection refused"

    def _from_client(self, link: _Link, data: bytes) -> None:
        """A chunk from the client."""
        if link.closed:
            return
        if self.mode is ProxyMode.LOSE_NEXT_REPLY and (self.match is None or self.match in data):
            self.mode, self.match = ProxyMode.PASS_THROUGH, None
            link.lose_reply, link.reply_match, self.reply_match = True, self.reply_match, None
        if link.lose_reply:
            link.cut += data
        if self.mode is ProxyMode.LATENCY and self._delayed_bytes < _DELAYED_CAP:
            self.delayed_requests.append((self.delay, data))
            self._delayed_bytes += len(data)
        link.to_server.feed(data)

    def _from_server(self, link: _Link, data: bytes) -> None:
        """A chunk from the server."""
        if link.closed:
            return
        if link.lose_reply and (link.reply_match is None or link.reply_match in data):
            self._stats.replies_lost += 1
            self.lost_requests.append(bytes(link.cut))
            link.abort()
            return
        link.to_client.feed(data)

    def _count(self, to_server: bool, nbytes: int) -> None:
        """Account forwarded bytes."""
        if to_server:
            self._stats.bytes_to_server += nbytes
        else:
            self._stats.bytes_to_client += nbytes

    def _forget_if_finished(self, link: _Link) -> None:
        """Drop a link whose transports and connect task are all gone."""
        if link.finished:
            self._links.discard(link)

"""The redis-py pools as the client uses them: built from settings with driver retries and health pings off.

* :func:`connection_kwargs` turns :class:`~trading_shared.RedisSettings` into connection arguments, rejecting
  (before any I/O, with :class:`~trading_shared.ConfigurationError`) URL options that would bring back a second
  retry layer (``retry_on_timeout``), a PING before commands (``health_check_interval``) or a different protocol.
* :class:`Commands` is ``redis.asyncio.Redis`` with a lean ``execute_command``: borrow a connection, send, parse,
  return it. No driver retry loop and no redis-py observability hooks on the hot path; the SDK's pipeline does
  both once. Pipelines and MULTI/EXEC run through :meth:`Commands.execute_stack`, which never copies the queued
  commands' arguments (keys, values) into its errors the way redis-py's pipeline does; bulk appends send
  arguments packed once, up front, through :meth:`Commands.execute_packed`.
* Connections carry ``CLIENT SETNAME <settings.name>`` (spaces replaced), so ``CLIENT LIST`` shows whose they are.
* :class:`Pools` holds the main pool and, created on first use, a pool for blocking reads (BRPOP, XREADGROUP
  BLOCK) whose read timeout is the block time plus ``socket_timeout``, so a long block is neither cut by the
  socket timeout nor holds a connection the short commands need.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.asyncio.connection as rconn
import redis.exceptions as rex

from ..compat.redis import stream_writer
from ..errors import ConfigurationError
from ..settings import RedisSettings
from ..telemetry.client import ClientTelemetry
from ..telemetry.instruments import PoolStats
from .connection import ON_CONNECTED, SDK_CLASSES

_log = logging.getLogger(__name__)

#: One queued command as redis-py's Pipeline records it: ``(args, options)``.
QueuedCommand = tuple[tuple[Any, ...], dict[str, Any]]

#: Seconds the current blocking command may block for (read by the blocking pool's ``execute_command``).
BLOCK_SECONDS: contextvars.ContextVar[float] = contextvars.ContextVar("trading_shared_redis_block", default=0.0)

_ALLOWED_QUERY = frozenset(
    {
        "db",
        "socket_keepalive",
        "socket_read_size",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_min_version",
        "ssl_include_verify_flags",
        "ssl_exclude_verify_flags",
    }
)
_SETTINGS_FIELDS = {"socket_timeout", "socket_connect_timeout", "max_connections", "timeout"}
_NAME_CHARS = re.compile(r"[^!-~]")  # CLIENT SETNAME takes printable ASCII without spaces


def connection_kwargs(settings: RedisSettings, on_connected: Callable[[float], None]) -> dict[str, Any]:
    """Connection arguments for the main pool. Raises ConfigurationError (never echoing the URL) on bad options."""
    try:
        parsed: dict[str, Any] = dict(rconn.parse_url(settings.url.get_secret_value()))
    except ValueError:
        raise ConfigurationError("url has an invalid option value") from None
    for key in list(parsed):
        if key in ("host", "port", "path", "username", "password", "connection_class"):
            continue
        if key in _SETTINGS_FIELDS:
            raise ConfigurationError(f"url option {key!r} is not supported: use the RedisSettings field instead")
        if key not in _ALLOWED_QUERY:
            raise ConfigurationError(
                f"url option {key!r} is not supported (the SDK retries once, at its own layer, and never PINGs)"
            )
    if any(k.startswith("ssl_") for k in parsed) and parsed.get("connection_class") is not rconn.SSLConnection:
        raise ConfigurationError("ssl_* url options need a rediss:// url")
    cls = parsed.pop("connection_class", rconn.Connection)
    if settings.password is not None:
        parsed["password"] = settings.password.get_secret_value()
    if settings.db is not None:
        parsed["db"] = settings.db
    parsed.update(
        connection_class=SDK_CLASSES[cls],
        socket_timeout=settings.socket_timeout,
        socket_connect_timeout=settings.socket_connect_timeout,
        retry=None,  # with no retry_on_error this gives every connection Retry(NoBackoff(), 0): no driver retries
        health_check_interval=0,  # no PING before commands
        decode_responses=False,  # bytes in, bytes out: never a UnicodeDecodeError after a destructive read
        protocol=2,
        client_name=_NAME_CHARS.sub("_", settings.name),
        max_connections=settings.max_connections,
        **{ON_CONNECTED: on_connected},
    )
    return parsed


def encode(value: bytes | str | int | float) -> bytes:
    """One argument as redis-py sends it: bytes as is, str as UTF-8, numbers as their repr."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return repr(value).encode()


def pack(args: Sequence[bytes]) -> bytes:
    """RESP bulk strings for ``args``, without the array header (see :meth:`Commands.execute_packed`)."""
    return b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


class Commands(aioredis.Redis):
    """``redis.asyncio.Redis`` over one of the SDK's pools: one attempt per command, errors left to the pipeline.

    ``blocking_base`` is None for the main pool. For the blocking pool it is the read timeout added to the block
    time of the command being run (:data:`BLOCK_SECONDS`). ``timing`` records the pool's wait and use times for the
    calls that hold a connection long enough for two histogram points to be cheap (bulk writes, pipelines, blocking
    reads); single commands skip them (~30 us per call).
    """

    def __init__(
        self,
        pool: aioredis.ConnectionPool,
        *,
        blocking_base: float | None = None,
        timing: ClientTelemetry | None = None,
    ) -> None:
        super().__init__(connection_pool=pool)
        self.blocking_base = blocking_base
        self.timing = timing

    @contextlib.asynccontextmanager
    async def borrow(self) -> AsyncIterator[rconn.Connection]:
        """A pooled connection, returned afterwards; its wait and use times recorded when ``timing`` is set."""
        pool = self.connection_pool
        started = time.perf_counter()
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        borrowed = time.perf_counter()
        if self.timing is not None:
            self.timing.pool_wait(borrowed - started)
        try:
            yield conn
        finally:
            await pool.release(conn)
            if self.timing is not None:
                self.timing.pool_use(time.perf_counter() - borrowed)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Send one command on a pooled connection and return its parsed reply (no retries)."""
        if self.blocking_base is not None:
            async with self.borrow() as conn:
                await _ensure_open(conn)
                conn.socket_timeout = self.blocking_base + BLOCK_SECONDS.get()
                await conn.send_command(*args)
                return await self.parse_response(conn, args[0], **options)
        pool = self.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await _ensure_open(conn)
            await conn.send_command(*args)
            return await self.parse_response(conn, args[0], **options)
        finally:
            await pool.release(conn)

    async def execute_packed(self, name: str, head: Sequence[Any], body: bytes, body_args: int) -> Any:
        """Send ``name *head`` followed by ``body``, ``body_args`` arguments already packed as RESP bulk strings."""
        async with self.borrow() as conn:
            await _ensure_open(conn)
            args = [name, *head]
            header = b"*%d\r\n" % (len(args) + body_args) + pack([encode(a) for a in args])
            await conn.send_packed_command([header, body])
            return await self.parse_response(conn, name)

    async def execute_stack(
        self, stack: Sequence[QueuedCommand], *, transaction: bool, raise_on_error: bool
    ) -> list[Any]:
        """Run queued commands in one round trip (inside MULTI/EXEC when ``transaction``); replies in order.

        With ``raise_on_error`` the first error reply is raised after every reply has been read, without the
        queued command's arguments in its message; otherwise error replies are returned in place.
        """
        async with self.borrow() as conn:
            await _ensure_open(conn)
            replies = await self._run_stack(conn, stack, transaction)
        if raise_on_error:
            raise_first_error(replies)
        return replies

    async def _run_stack(self, conn: rconn.Connection, stack: Sequence[QueuedCommand], transaction: bool) -> list[Any]:
        """Send the queued commands on ``conn`` and read every reply (error replies in place)."""
        if transaction:
            return await self._transaction(conn, stack)
        await conn.send_packed_command(conn.pack_commands([args for args, _ in stack]))
        replies: list[Any] = []
        for args, options in stack:
            try:
                replies.append(await self.parse_response(conn, args[0], **dict(options)))
            except rex.ResponseError as err:
                replies.append(err)
        return replies

    async def _transaction(self, conn: rconn.Connection, stack: Sequence[QueuedCommand]) -> list[Any]:
        commands = [("MULTI",), *(args for args, _ in stack), ("EXEC",)]
        await conn.send_packed_command(conn.pack_commands(commands))
        queued: list[rex.ResponseError] = []
        for _ in range(len(stack) + 1):  # +OK for MULTI, then QUEUED (or an error) per command
            try:
                await self.parse_response(conn, "_")
            except rex.ResponseError as err:
                queued.append(err)
        try:
            response = await self.parse_response(conn, "_")
        except rex.ExecAbortError:
            if queued:
                raise queued[0] from None
            raise
        if response is None or len(response) != len(stack):
            await conn.disconnect()
            raise rex.InvalidResponse("unexpected EXEC reply")
        replies: list[Any] = []
        for reply, (args, options) in zip(response, stack, strict=True):
            if not isinstance(reply, Exception):
                callback = self.response_callbacks.get(args[0])
                if callback is not None:
                    opts = {k: v for k, v in options.items() if k != "keys"}
                    reply = callback(reply, **opts)
                    if inspect.isawaitable(reply):
                        reply = await reply
            replies.append(reply)
        return replies


def raise_first_error(replies: Sequence[Any]) -> None:
    """Raise the first error reply of a pipeline, if any."""
    for reply in replies:
        if isinstance(reply, rex.ResponseError):
            raise reply


async def _ensure_open(conn: rconn.AbstractConnection) -> None:
    """Reopen a pooled connection whose transport was lost after the pool's readiness check, BEFORE sending.

    The pool checks a borrowed connection with a zero-timeout read; a reset that the event loop processes just after
    that check leaves a closing transport, to which a write is silently dropped and which then fails like a lost
    reply. Reopening it here keeps that case a connect-phase failure (never sent, safe to retry).
    """
    writer = stream_writer(conn)  # redis-py keeps the StreamWriter private
    if writer is not None and writer.transport.is_closing():
        await conn.disconnect(nowait=True)
        await conn.connect()  # type: ignore[no-untyped-call]


class Pools:
    """The pools of one connected client. ``closed`` is set once :meth:`close` starts."""

    def __init__(self, kwargs: dict[str, Any], settings: RedisSettings, timing: ClientTelemetry | None = None) -> None:
        self._kwargs = kwargs
        self._settings = settings
        self._timing = timing
        self.main = Commands(aioredis.ConnectionPool(**kwargs), timing=timing)
        self._blocking: Commands | None = None
        self.closed = False

    def blocking(self) -> Commands:
        """The blocking-read client, created (without I/O) on first use."""
        if self._blocking is None:
            pool = aioredis.ConnectionPool(**{**self._kwargs, "socket_timeout": None})
            self._blocking = Commands(pool, blocking_base=self._settings.socket_timeout, timing=self._timing)
        return self._blocking

    async def open_one(self) -> None:
        """Open (and pool) one connection: bad credentials and an unreachable server show up here."""
        pool = self.main.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        await pool.release(conn)

    async def disconnect_all(self) -> None:
        """Close every connection of both pools, those in use included: the calls using them fail (the server was
        demoted under them, and a reply from it could acknowledge a write it is about to discard)."""
        for commands in (self.main, self._blocking):
            if commands is not None:
                try:
                    await commands.connection_pool.disconnect(inuse_connections=True)
                except (rex.RedisError, OSError):
                    _log.debug("closing redis connections failed", exc_info=True)

    def stats(self) -> PoolStats:
        """Idle, used and max connections over both pools; pending is 0 (a full pool fails fast, nobody waits)."""
        idle = used = cap = 0
        for commands in (self.main, self._blocking):
            if commands is None:
                continue
            pool = commands.connection_pool
            counts = pool.get_connection_count()
            idle += counts[0][0]
            used += counts[1][0]
            cap += pool.max_connections
        return PoolStats(idle=idle, used=used, max=cap, pending=0)

    async def close(self, timeout: float) -> None:
        """Disconnect every connection of both pools within ``timeout`` seconds."""
        self.closed = True
        pools = [c.connection_pool for c in (self.main, self._blocking) if c is not None]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(pool.aclose() for pool in pools), return_exceptions=True)
        except TimeoutError:
            # Each connection's transport was closed before the wait that timed out: nothing stays open.
            _log.warning("redis pool did not close within %.1f s", timeout)

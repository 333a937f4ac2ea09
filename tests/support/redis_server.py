"""A private, disposable redis-server for tests (see :class:`RedisServer`)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any, Literal

from .managed_server import ManagedServer
from .procs import ServerBinaryMissing, ServerError

REDIS_DIR_PREFIX = "ts-redis-"
_UNSET: Any = object()


class RedisReplyError(ServerError):
    """redis-server answered a :meth:`RedisServer.cli` command with an error reply."""


def find_redis_server() -> str:
    """Locate redis-server: ``$TS_REDIS_SERVER``, else ``redis-server`` on PATH or in /usr/bin."""
    for candidate in (os.environ.get("TS_REDIS_SERVER"), shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise ServerBinaryMissing("redis-server")


def resp_command(
    host: str, port: int, *args: str | bytes | int | float, password: str | None = None, timeout: float = 5.0
) -> Any:
    """Send one command over a fresh RESP2 connection and return the decoded reply (no retries, no handshake).

    Replies: str (simple/bulk string, UTF-8 with replacement), int, None, or list. Error replies raise
    :class:`RedisReplyError`; socket failures raise OSError (TimeoutError when the server does not answer).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock, sock.makefile("rb") as reader:
        if password is not None:
            sock.sendall(_encode(("AUTH", password)))
            _read_reply(reader)
        sock.sendall(_encode(args))
        return _read_reply(reader)


def _encode(args: tuple[str | bytes | int | float, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _read_reply(reader: Any) -> Any:
    line: bytes = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("redis-server closed the connection")
    kind, body = line[:1], line[1:-2]
    if kind == b"+":
        return body.decode(errors="replace")
    if kind == b"-":
        raise RedisReplyError(body.decode(errors="replace"))
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise ServerError(f"unexpected RESP reply {line!r}")


class RedisServer(ManagedServer):
    """A redis-server child process on a free 127.0.0.1 port, with a temp dir as its working dir.

    Started with ``--save "" --appendonly no --enable-debug-command local`` (DEBUG SLEEP etc. allowed from
    loopback): nothing is persisted, so data does NOT survive :meth:`restart` or :meth:`kill`.
    ``password`` sets ``requirepass``. :meth:`stop` sends SIGTERM (no save configured, so no disk writes);
    :meth:`ensure_running` also lifts a CLIENT PAUSE, and restarts a server that does not answer PING with its
    password (CLIENT PAUSE ALL, DEBUG SLEEP, CONFIG SET requirepass). All methods block: from async tests use
    ``asyncio.to_thread``.
    """

    name = "redis-server"
    dir_prefix = REDIS_DIR_PREFIX
    log_name = "redis.log"
    pid_file = "redis.pid"
    output_name = "redis.stdout"

    def __init__(
        self,
        *,
        password: str | None = None,
        binary: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout)
        self.binary = binary or find_redis_server()
        self.password = password
        self._extra_args = extra_args

    def restart(self, mode: Literal["term", "kill"] = "term") -> None:
        """Stop (SIGTERM, or SIGKILL with ``mode="kill"``) and start again on the same port (data is lost)."""
        if mode == "kill":
            self.kill()
        else:
            self.stop()
        self.start()

    def url(self, db: int = 0, password: str | None = None) -> str:
        """A ``redis://`` URL; ``password`` defaults to the server's own (pass a wrong one to test auth errors)."""
        password = self.password if password is None else password
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def cli(self, *args: str | bytes | int | float, password: str | None = _UNSET, timeout: float = 5.0) -> Any:
        """Run one command on a fresh connection (authenticated with the server's password unless overridden)."""
        password = self.password if password is _UNSET else password
        return resp_command(self.host, self.port, *args, password=password, timeout=timeout)

    # ------------------------------------------------------------------ ManagedServer

    def _spawn_and_wait(self) -> bool:
        base = self.base_dir
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            self.host,
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "local",
            "--dir",
            str(base),
            "--logfile",
            str(self.log_path),
            "--pidfile",
            str(base / self.pid_file),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self._extra_args)
        self._popen(args, cwd=base)
        return self._wait_spawned(lambda: self.cli("PING", timeout=1.0) == "PONG", interval=0.01)

    def _responsive(self) -> bool:
        try:
            if self.cli("PING", timeout=1.0) != "PONG":
                return False
            self.cli("CLIENT", "UNPAUSE", timeout=1.0)  # CLIENT PAUSE WRITE lets PING through
        except (OSError, ServerError):
            return False
        return True

"""A private, disposable redis-server for tests (see :class:`RedisServer`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

from .procs import (
    ServerBinaryMissing,
    ServerError,
    free_port,
    is_alive,
    is_stopped,
    make_temp_dir,
    read_pid_file,
    reap_stale,
    register,
    send_signal,
    unregister,
    wait_dead,
    wait_until,
)

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


class RedisServer:
    """A redis-server child process on a free 127.0.0.1 port, with a temp dir as its working dir.

    Started with ``--save "" --appendonly no --enable-debug-command local`` (DEBUG SLEEP etc. allowed from
    loopback): nothing is persisted, so data does NOT survive :meth:`restart` or :meth:`kill`.
    ``password`` sets ``requirepass``. All methods block: from async tests use ``asyncio.to_thread``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        password: str | None = None,
        binary: str | None = None,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = binary or find_redis_server()
        self.password = password
        self._port = port
        self._port_fixed = port is not None
        self._extra_args = extra_args
        self._start_timeout = start_timeout
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """TCP port (fixed after the first start: restarts keep it)."""
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def base_dir(self) -> Path:
        """Temp dir: redis-server's ``--dir``, log and pid file."""
        if self._base is None:
            reap_stale(REDIS_DIR_PREFIX, _kill_stale_redis)
            self._base = make_temp_dir(REDIS_DIR_PREFIX)
            register(self)
        return self._base

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self.base_dir / "redis.log"

    @property
    def pid(self) -> int | None:
        """Pid of the server process if it is alive (frozen counts as alive), else None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True if the server process exists (it may be frozen)."""
        return self.pid is not None

    @property
    def frozen(self) -> bool:
        """True if the server process is stopped by SIGSTOP."""
        pid = self.pid
        return pid is not None and is_stopped(pid)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start redis-server (same port as before if it ran already) and wait until it answers PING."""
        if self.running:
            return
        attempts = 1 if (self._started_once or self._port_fixed) else 4
        for attempt in range(attempts):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            if self._spawn_and_wait():
                self._started_once = True
                return
            log = self._read_log(log_size)
            if "Address already in use" in log and attempt + 1 < attempts:
                self._port = free_port(self.host)
                continue
            raise ServerError(f"redis-server failed to start on port {self.port}:\n{log[-3000:]}")

    def stop(self) -> None:
        """Stop with SIGTERM (no save configured, so no disk writes) and wait; thaws it first if frozen."""
        if self._proc is None:
            return
        if self.frozen:
            self.thaw()
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(10)
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (a crash): clients see their connections reset/closed at once."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(10)
        self._proc = None

    def restart(self, mode: Literal["term", "kill"] = "term") -> None:
        """Stop (SIGTERM, or SIGKILL with ``mode="kill"``) and start again on the same port (data is lost)."""
        if mode == "kill":
            self.kill()
        else:
            self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the server: commands and new connections hang (the kernel still completes TCP handshakes)."""
        pid = self.pid
        if pid is None:
            raise ServerError("cannot freeze: redis-server is not running")
        os.kill(pid, signal.SIGSTOP)
        wait_until(lambda: is_stopped(pid) or not is_alive(pid), 5)

    def thaw(self) -> None:
        """SIGCONT the server."""
        pid = self.pid
        if pid is not None:
            send_signal([pid], signal.SIGCONT)

    def ensure_running(self) -> None:
        """Bring the server back after a test froze, stopped, killed or reconfigured it.

        A CLIENT PAUSE is lifted; if it does not answer PING within 1 s with its configured password
        (e.g. CLIENT PAUSE ALL, DEBUG SLEEP or CONFIG SET requirepass), it is killed and started afresh.
        """
        if self.frozen:
            self.thaw()
        if self.running:
            try:
                if self.cli("PING", timeout=1.0) == "PONG":
                    self.cli("CLIENT", "UNPAUSE", timeout=1.0)  # CLIENT PAUSE WRITE lets PING through
                    return
            except (OSError, ServerError):
                pass
            self.kill()
        self.start()

    def cleanup(self) -> None:
        """Kill the server and delete its temp dir. Idempotent."""
        with contextlib.suppress(Exception):
            self.thaw()
        with contextlib.suppress(Exception):
            self.kill()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        unregister(self)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ helpers

    def url(self, db: int = 0, password: str | None = None) -> str:
        """A ``redis://`` URL; ``password`` defaults to the server's own (pass a wrong one to test auth errors)."""
        password = self.password if password is None else password
        auth = f":{password}@" if password else ""
        return f"redis://{auth}{self.host}:{self.port}/{db}"

    def cli(self, *args: str | bytes | int | float, password: str | None = _UNSET, timeout: float = 5.0) -> Any:
        """Run one command on a fresh connection (authenticated with the server's password unless overridden)."""
        password = self.password if password is _UNSET else password
        return resp_command(self.host, self.port, *args, password=password, timeout=timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        return "\n".join(self._read_log(0).splitlines()[-lines:])

    # ------------------------------------------------------------------ internals

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
            str(base / "redis.pid"),
            "--daemonize",
            "no",
        ]
        if self.password:
            args += ["--requirepass", self.password]
        args += list(self._extra_args)
        with (base / "redis.stdout").open("ab") as out:
            # Own session: a Ctrl-C in the terminal must not kill it behind the fixtures' back.
            self._proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True, cwd=base
            )
        deadline = time.monotonic() + self._start_timeout
        while self._proc.poll() is None:
            try:
                if self.cli("PING", timeout=1.0) == "PONG":
                    return True
            except (OSError, ServerError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                return False
            time.sleep(0.01)
        self._proc.wait()
        self._proc = None
        return False

    def _read_log(self, offset: int) -> str:
        text = ""
        for path in (self.log_path, self.base_dir / "redis.stdout"):
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(offset if path == self.log_path else 0)
                text += f.read().decode(errors="replace")
        return text


def _kill_stale_redis(base: Path) -> None:
    """Kill a redis-server left behind by a dead test session (its working dir is ``base``)."""
    pid = read_pid_file(base / "redis.pid")
    if pid is None or not is_alive(pid):
        return
    try:
        if os.readlink(f"/proc/{pid}/cwd") != str(base):
            return  # pid reused by something else
    except OSError:
        return
    send_signal([pid], signal.SIGKILL)
    send_signal([pid], signal.SIGCONT)
    wait_dead([pid], 5)

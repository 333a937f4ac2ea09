"""A private, disposable PgBouncer (the Debian package's binary) in front of a test PostgreSQL server.

:class:`PgBouncer` writes a temp ini and an auth file, starts ``pgbouncer`` in the foreground on a free
127.0.0.1 port (as the ``postgres`` OS user when the tests run as root: PgBouncer refuses to run as root) and
removes everything on :meth:`cleanup`, which also runs at interpreter exit. A session that died without cleaning
up is reaped by the next one (the temp dir records its owner, like the private PostgreSQL servers).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

from support.procs import (
    ServerBinaryMissing,
    ServerError,
    free_port,
    is_alive,
    make_temp_dir,
    read_pid_file,
    reap_stale,
    register,
    send_signal,
    unregister,
    wait_dead,
)

PGBOUNCER_DIR_PREFIX = "ts-pgbouncer-"

#: The settings the deployment guide (docs/postgres-pgbouncer.md) recommends, as the tests use them.
RECOMMENDED = {
    "pool_mode": "transaction",
    # PgBouncer's default waits 15 s before it tries a server again after a failed login: an outage that
    # outlives a PostgreSQL restart by up to 15 s. Retry quickly; the SDK's breaker sheds the load meanwhile.
    "server_login_retry": "1",
    # A query waiting for a server connection fails after this many seconds instead of the default 120:
    # keep it below the SDK's retry deadline so that an unreachable PostgreSQL is an error the SDK can
    # count and retry, not a hang the deadline cuts off.
    "query_wait_timeout": "2",
    "server_connect_timeout": "2",
    # Some drivers send it at start-up; asyncpg does not, but it costs nothing to accept it.
    "ignore_startup_parameters": "extra_float_digits",
}


def find_pgbouncer() -> Path:
    """The pgbouncer binary: ``$TS_PGBOUNCER``, else ``/usr/sbin/pgbouncer`` or one on ``PATH``."""
    for candidate in (os.environ.get("TS_PGBOUNCER"), "/usr/sbin/pgbouncer", shutil.which("pgbouncer")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise ServerBinaryMissing("pgbouncer (Debian package pgbouncer)")


class PgBouncer:
    """PgBouncer on a free 127.0.0.1 port forwarding every database (``* =``) to one PostgreSQL server.

    Auth is ``trust`` for the users in the auth file (``postgres`` by default); PgBouncer logs in to the server
    as the connecting user. ``settings`` are added to (and override) :data:`RECOMMENDED` and the defaults here.
    All methods block: from async tests call them through ``asyncio.to_thread``.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        server_host: str,
        server_port: int,
        *,
        default_pool_size: int = 3,
        users: tuple[str, ...] = ("postgres",),
        settings: dict[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.binary = find_pgbouncer()
        self.server_host = server_host
        self.server_port = server_port
        self._users = users
        self._settings = {**RECOMMENDED, "default_pool_size": str(default_pool_size), **(settings or {})}
        self._start_timeout = start_timeout
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerBinaryMissing("the 'postgres' OS user (pgbouncer refuses to run as root)") from None
            self._owner = (pw.pw_uid, pw.pw_gid)
        self.port = free_port(self.host)
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ paths

    @property
    def base_dir(self) -> Path:
        """Temp dir holding ``pgbouncer.ini``, ``userlist.txt``, the pid file and ``pgbouncer.log``."""
        if self._base is None:
            reap_stale(PGBOUNCER_DIR_PREFIX, _kill_stale_pgbouncer)
            self._base = make_temp_dir(PGBOUNCER_DIR_PREFIX)
            if self._owner:
                os.chown(self._base, *self._owner)
            register(self)
        return self._base

    @property
    def ini_path(self) -> Path:
        """The generated configuration file."""
        return self.base_dir / "pgbouncer.ini"

    @property
    def log_path(self) -> Path:
        """PgBouncer's log file."""
        return self.base_dir / "pgbouncer.log"

    @property
    def pid(self) -> int | None:
        """The pgbouncer process id while it runs, else None."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Write the configuration, start pgbouncer and wait until its admin console answers."""
        if self.pid is not None:
            return
        self._write_config()
        log = (self.base_dir / "stderr.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [str(self.binary), str(self.ini_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal must not kill it before cleanup runs
                user=self._owner[0] if self._owner else None,
                group=self._owner[1] if self._owner else None,
                extra_groups=[] if self._owner else None,
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"},
            )
        finally:
            log.close()
        deadline = time.monotonic() + self._start_timeout
        while not self._accepting():
            if self._proc.poll() is not None:
                raise ServerError(f"pgbouncer exited with rc={self._proc.returncode}\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"pgbouncer not listening on port {self.port}\n{self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop pgbouncer (SIGINT: immediate shutdown, then SIGKILL if it lingers)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def cleanup(self) -> None:
        """Stop pgbouncer and delete its temp dir. Idempotent."""
        with contextlib.suppress(Exception):
            self.stop()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        unregister(self)

    def __enter__(self) -> PgBouncer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ------------------------------------------------------------------ use

    def dsn(self, db: str = "postgres", user: str = "postgres") -> str:
        """A ``postgresql://`` DSN that reaches ``db`` through PgBouncer."""
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{quote(db, safe='')}"

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of PgBouncer's log (for failure messages)."""
        text = ""
        for path in (self.log_path, self.base_dir / "stderr.log"):
            with contextlib.suppress(OSError):
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ internals

    def _accepting(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            return s.connect_ex((self.host, self.port)) == 0

    def _write_config(self) -> None:
        base = self.base_dir
        settings = {
            "listen_addr": self.host,
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(base / "userlist.txt"),
            "admin_users": "postgres",
            "pidfile": str(base / "pgbouncer.pid"),
            "logfile": str(self.log_path),
            "max_client_conn": "500",
            "log_connections": "0",
            "log_disconnections": "0",
            **self._settings,
        }
        ini = ["[databases]", f"* = host={self.server_host} port={self.server_port}", "", "[pgbouncer]"]
        ini += [f"{key} = {value}" for key, value in settings.items()]
        self._write(self.ini_path, "\n".join(ini) + "\n")
        self._write(base / "userlist.txt", "".join(f'"{user}" ""\n' for user in self._users))

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._owner:
            os.chown(path, *self._owner)


def _kill_stale_pgbouncer(base: Path) -> None:
    """Kill a pgbouncer left behind by a dead test session (only if its command line names this dir)."""
    pid = read_pid_file(base / "pgbouncer.pid")
    if pid is None or not is_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(base).encode() in cmdline:
        send_signal([pid], signal.SIGKILL)
        wait_dead([pid], 5)

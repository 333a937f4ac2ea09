"""A private, disposable PgBouncer (the Debian package's binary) in front of a test PostgreSQL server.

:class:`PgBouncer` writes a temp ini and an auth file, starts ``pgbouncer`` in the foreground on a free
127.0.0.1 port (as the ``postgres`` OS user when the tests run as root: PgBouncer refuses to run as root) and
removes everything on :meth:`cleanup`, which also runs at interpreter exit. A session that died without cleaning
up is reaped by the next one. The process bookkeeping is :class:`support.managed_server.ManagedServer`'s.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from urllib.parse import quote

from support.managed_server import ManagedServer, postgres_os_user
from support.procs import ServerBinaryMissing

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


class PgBouncer(ManagedServer):
    """PgBouncer on a free 127.0.0.1 port forwarding every database (``* =``) to one PostgreSQL server.

    Auth is ``trust`` for the users in the auth file (``postgres`` by default); PgBouncer logs in to the server
    as the connecting user. ``settings`` are added to (and override) :data:`RECOMMENDED` and the defaults here.
    Ready when its port accepts connections; :meth:`stop` sends SIGINT (immediate shutdown).
    All methods block: from async tests call them through ``asyncio.to_thread``.
    """

    name = "pgbouncer"
    dir_prefix = PGBOUNCER_DIR_PREFIX
    log_name = "pgbouncer.log"
    pid_file = "pgbouncer.pid"
    output_name = "stderr.log"
    stop_signal = signal.SIGINT

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
        super().__init__(start_timeout=start_timeout, owner=postgres_os_user("pgbouncer refuses to run as root"))
        self.server_host = server_host
        self.server_port = server_port
        self._users = users
        self._settings = {**RECOMMENDED, "default_pool_size": str(default_pool_size), **(settings or {})}

    @property
    def ini_path(self) -> Path:
        """The generated configuration file."""
        return self.base_dir / "pgbouncer.ini"

    def dsn(self, db: str = "postgres", user: str = "postgres") -> str:
        """A ``postgresql://`` DSN that reaches ``db`` through PgBouncer."""
        return f"postgresql://{quote(user, safe='')}@{self.host}:{self.port}/{quote(db, safe='')}"

    # ------------------------------------------------------------------ ManagedServer

    def _spawn_and_wait(self) -> bool:
        self._write_config()
        self._popen(
            [str(self.binary), str(self.ini_path)], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}
        )
        return self._wait_spawned(self._accepting)

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
            "pidfile": str(base / self.pid_file),
            "logfile": str(self.log_path),
            "max_client_conn": "500",
            "log_connections": "0",
            "log_disconnections": "0",
            **self._settings,
        }
        ini = ["[databases]", f"* = host={self.server_host} port={self.server_port}", "", "[pgbouncer]"]
        ini += [f"{key} = {value}" for key, value in settings.items()]
        self._write_file(self.ini_path, "\n".join(ini) + "\n")
        self._write_file(base / "userlist.txt", "".join(f'"{user}" ""\n' for user in self._users))

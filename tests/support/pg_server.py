"""A private, disposable PostgreSQL server for tests (see :class:`PostgresServer`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from .managed_server import ManagedServer, postgres_os_user
from .procs import ServerBinaryMissing, ServerError, children_of, is_alive, read_pid_file, send_signal, wait_dead

PG_DIR_PREFIX = "ts-pg-"
SECURED_ROLE = "secured"
SECURED_PASSWORD = "secured-password"
_PG_TOOLS = ("initdb", "pg_ctl", "postgres", "psql", "pg_isready")

StopMode = Literal["smart", "fast", "immediate"]
RestartMode = Literal["smart", "fast", "immediate", "kill"]

_SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "max_connections": "100",
    "shared_buffers": "16MB",
    # fsync=off is safe for process crashes (WAL reaches the OS page cache at commit).
    # Do NOT add synchronous_commit=off: kill()/immediate stop would then lose committed rows.
    "fsync": "off",
    "full_page_writes": "off",
    "autovacuum": "off",
    "jit": "off",
    "lc_messages": "'C'",
    "log_line_prefix": "'%m [%p] %q%u@%d/%a '",
}


def find_pg_bindir() -> Path:
    """Locate the PostgreSQL server binaries: ``$TS_PG_BINDIR``, else the newest ``/usr/lib/postgresql/*/bin``."""
    candidates: list[Path] = []
    if env := os.environ.get("TS_PG_BINDIR"):
        candidates.append(Path(env))
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates += versions
    if which := shutil.which("pg_ctl"):
        candidates.append(Path(which).resolve().parent)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in _PG_TOOLS):
            return bindir
    raise ServerBinaryMissing(f"PostgreSQL server binaries ({', '.join(_PG_TOOLS)})")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(extra)
    return env


class PostgresServer(ManagedServer):
    """A PostgreSQL cluster in a temp dir, listening on a free 127.0.0.1 port (TCP only, no unix socket).

    Trust auth for every role except those passed to :meth:`require_password` (scram-sha-256); the role
    ``secured`` (password ``secured-password``) exists and needs its password from the start.
    Settings: fsync=off, full_page_writes=off, shared_buffers=16MB, max_connections=100, autovacuum=off;
    the server log is ``<base_dir>/postgresql.log``. All methods block: from async tests call them with
    ``await asyncio.to_thread(server.restart)``. When run as root, initdb/pg_ctl run as ``postgres`` via runuser.
    :meth:`freeze` stops the postmaster and its backends.
    """

    name = "PostgreSQL"
    dir_prefix = PG_DIR_PREFIX
    log_name = "postgresql.log"
    pid_file = "data/postmaster.pid"
    freeze_children = True

    def __init__(self, *, bindir: Path | None = None, port: int | None = None, start_timeout: float = 30.0) -> None:
        self.bindir = bindir or find_pg_bindir()
        owner = postgres_os_user("initdb refuses to run as root")
        self._as_owner: list[str] = []
        if owner is not None:
            runuser = shutil.which("runuser")
            if runuser is None:
                raise ServerBinaryMissing("runuser (util-linux)")
            self._as_owner = [runuser, "-u", "postgres", "--"]
        super().__init__(port=port, start_timeout=start_timeout, owner=owner)
        self._orphans: list[int] = []
        self._password_roles: list[tuple[str, str]] = [(SECURED_ROLE, "scram-sha-256")]

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def pid(self) -> int | None:
        """Postmaster pid if it is alive (a frozen postmaster counts as alive), else None."""
        if self._base is None:
            return None
        pid = read_pid_file(self.base_dir / self.pid_file)
        return pid if pid is not None and is_alive(pid) else None

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m <mode>`` and wait until it is gone (thaws it first if frozen)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"bad stop mode {mode!r}")
        if self.frozen:
            self.thaw()
        pid = self.pid
        if pid is None:
            return
        children = children_of(pid)
        proc = self._run_as_owner(
            [str(self.bindir / "pg_ctl"), "stop", "-w", "-t", "30", "-m", mode, "-D", str(self.datadir)], check=False
        )
        if proc.returncode != 0 and self.running:
            self.kill()
            return
        wait_dead([pid, *children], 10)

    def kill(self, children: bool = True) -> None:
        """SIGKILL the postmaster (a crash): with ``children`` (default) its backends die with it at once.

        With ``children=False`` the orphaned backends exit by themselves when they notice (usually within
        milliseconds); :meth:`start` waits for them. The next start runs crash recovery (committed data survives).
        """
        pid = self.pid
        if pid is None:
            return
        kids = children_of(pid)
        send_signal([pid], signal.SIGKILL)
        if children:
            send_signal(kids, signal.SIGKILL)
            wait_dead(kids, 10)
        else:
            send_signal(kids, signal.SIGCONT)
            self._orphans = kids
        wait_dead([pid], 10)
        self._frozen = []

    def restart(self, mode: RestartMode = "fast") -> None:
        """Stop (``mode``, or a SIGKILL crash with ``mode="kill"``) and start again on the same port."""
        if mode == "kill":
            self.kill()
        else:
            self.stop(mode)
        self.start()

    # ------------------------------------------------------------------ SQL helpers

    def dsn(self, db: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        """A ``postgresql://`` DSN for this server."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(db, safe='')}"

    def psql(
        self, sql: str, db: str = "postgres", user: str = "postgres", password: str | None = None, timeout: float = 30
    ) -> str:
        """Run SQL through psql (each statement on its own, stop on the first error); return unaligned output."""
        env = _clean_env(PGCONNECT_TIMEOUT=str(max(2, int(timeout))), **({"PGPASSWORD": password} if password else {}))
        cmd = [
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            user,
            "-d",
            db,
            "-f",
            "-",
        ]
        try:
            proc = subprocess.run(cmd, input=sql, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"psql timed out after {timeout}s: {sql!r}") from exc
        if proc.returncode != 0:
            raise ServerError(f"psql failed (rc={proc.returncode}) for {sql!r}: {proc.stderr.strip()}")
        return proc.stdout.rstrip("\n")

    def create_database(self, name: str, template: str = "template1") -> None:
        """CREATE DATABASE ``name`` from ``template`` (FILE_COPY strategy: fastest here with fsync=off)."""
        self.psql(f"CREATE DATABASE {_ident(name)} TEMPLATE {_ident(template)} STRATEGY file_copy")

    def drop_database(self, name: str) -> None:
        """DROP DATABASE IF EXISTS ``name`` WITH (FORCE): terminates sessions still connected to it."""
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    def set_password(self, user: str, password: str) -> None:
        """Create login role ``user`` if missing and set its (scram) password; see :meth:`require_password`."""
        self.psql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {_literal(user)}) "
            f"THEN CREATE ROLE {_ident(user)} LOGIN; END IF; END $$;\n"
            f"ALTER ROLE {_ident(user)} LOGIN PASSWORD {_literal(password)};"
        )

    def require_password(self, user: str, method: str = "scram-sha-256") -> None:
        """Make ``user`` authenticate with ``method`` (scram-sha-256 or md5) over TCP; others stay on trust.

        Rewrites pg_hba.conf and reloads the server: new connections use the new rule.
        """
        if not re.fullmatch(r"[A-Za-z0-9_]+", user) or method not in ("scram-sha-256", "md5", "password", "reject"):
            raise ValueError(f"unsupported role name or method: {user!r} {method!r}")
        if user == "postgres":
            raise ValueError("the fixtures administer the server as 'postgres' over trust: use another role")
        self._password_roles = [(u, m) for u, m in self._password_roles if u != user] + [(user, method)]
        self._write_hba()
        self.psql("SELECT pg_reload_conf()")

    # ------------------------------------------------------------------ ManagedServer

    def _prepare(self) -> None:
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self._clear_stale_pid_file()

    def _spawn_and_wait(self) -> bool:
        # pg_ctl -w waits until the server accepts connections or gives up; pg_isready then double-checks.
        cmd = [str(self.bindir / "pg_ctl"), "start", "-w", "-t", str(int(self._start_timeout)), "-D", str(self.datadir)]
        proc = self._run_as_owner([*cmd, "-l", str(self.log_path), "-o", f"-p {self.port}"], check=False)
        if proc.returncode != 0:
            self._spawn_error = f"pg_ctl start rc={proc.returncode}: {proc.stdout}{proc.stderr}".strip()
            return False
        self._wait_ready()
        return True

    def _started(self, first: bool) -> None:
        if first:
            self.set_password(SECURED_ROLE, SECURED_PASSWORD)

    def _halt(self) -> None:
        """Immediate shutdown (SIGKILL if that fails); waits for backends orphaned by an earlier kill."""
        with contextlib.suppress(Exception):
            if self.running:
                self.stop("immediate")
        with contextlib.suppress(Exception):
            self.kill()
        wait_dead(self._orphans, 10)

    # ------------------------------------------------------------------ internals

    def _run_as_owner(self, cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [*self._as_owner, *cmd],
            capture_output=True,
            text=True,
            env=_clean_env(LC_ALL="C"),
            timeout=self._start_timeout + 30,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise ServerError(f"{cmd[0]} failed (rc={proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def _initdb(self) -> None:
        self._run_as_owner(
            [
                str(self.bindir / "initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        conf = "\n# added by tests/support/pg_server.py\n" + "".join(f"{k} = {v}\n" for k, v in _SETTINGS.items())
        with (self.datadir / "postgresql.conf").open("a") as f:
            f.write(conf)
        self._write_hba()

    def _write_hba(self) -> None:
        lines = ["# written by tests/support/pg_server.py: password roles first, then trust for all (TCP only)"]
        lines += [f"host all {user} 127.0.0.1/32 {method}" for user, method in self._password_roles]
        lines.append("host all all 127.0.0.1/32 trust")
        self._write_file(self.datadir / "pg_hba.conf", "\n".join(lines) + "\n")

    def _clear_stale_pid_file(self) -> None:
        """After a SIGKILL the pid file stays; its pid may be a zombie, which PostgreSQL takes for a live server."""
        if self._orphans and not wait_dead(self._orphans, 10):
            send_signal(self._orphans, signal.SIGKILL)
            wait_dead(self._orphans, 5)
        self._orphans = []
        pid_file = self.datadir / "postmaster.pid"
        pid = read_pid_file(pid_file)
        if pid is not None and not is_alive(pid):
            pid_file.unlink(missing_ok=True)

    def _wait_ready(self) -> None:
        cmd = [
            str(self.bindir / "pg_isready"),
            "-q",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-t",
            "2",
        ]
        deadline = time.monotonic() + self._start_timeout
        while True:
            rc = subprocess.run(cmd, env=_clean_env(), check=False, timeout=10).returncode
            if rc == 0:
                return
            if time.monotonic() > deadline or not self.running:
                raise ServerError(f"PostgreSQL not ready on port {self.port} (pg_isready rc={rc})\n{self.log_tail()}")
            time.sleep(0.05)

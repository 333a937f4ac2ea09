"""A private, disposable PostgreSQL server for tests (see :class:`PostgresServer`)."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from .procs import (
    ServerBinaryMissing,
    ServerError,
    children_of,
    free_port,
    is_alive,
    is_stopped,
    make_temp_dir,
    proc_state,
    read_pid_file,
    reap_stale,
    register,
    send_signal,
    unregister,
    wait_dead,
    wait_until,
)

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


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, listening on a free 127.0.0.1 port (TCP only, no unix socket).

    Trust auth for every role except those passed to :meth:`require_password` (scram-sha-256); the role
    ``secured`` (password ``secured-password``) exists and needs its password from the start.
    Settings: fsync=off, full_page_writes=off, shared_buffers=16MB, max_connections=100, autovacuum=off;
    the server log is ``<base_dir>/postgresql.log``. All methods block: from async tests call them with
    ``await asyncio.to_thread(server.restart)``. When run as root, initdb/pg_ctl run as ``postgres`` via runuser.
    """

    host = "127.0.0.1"

    def __init__(self, *, bindir: Path | None = None, port: int | None = None, start_timeout: float = 30.0) -> None:
        self.bindir = bindir or find_pg_bindir()
        self._as_owner: list[str] = []
        self._owner: tuple[int, int] | None = None
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerBinaryMissing("the 'postgres' OS user (initdb refuses to run as root)") from None
            if runuser is None:
                raise ServerBinaryMissing("runuser (util-linux)")
            self._as_owner = [runuser, "-u", "postgres", "--"]
            self._owner = (pw.pw_uid, pw.pw_gid)
        self._port = port
        self._port_fixed = port is not None
        self._start_timeout = start_timeout
        self._base: Path | None = None
        self._started_once = False
        self._frozen: list[int] = []
        self._orphans: list[int] = []
        self._password_roles: list[tuple[str, str]] = [(SECURED_ROLE, "scram-sha-256")]

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """TCP port (fixed after the first start: restarts keep it)."""
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def base_dir(self) -> Path:
        """Temp dir holding ``data/`` and ``postgresql.log``."""
        if self._base is None:
            reap_stale(PG_DIR_PREFIX, _kill_stale_cluster)
            self._base = make_temp_dir(PG_DIR_PREFIX)
            if self._owner:
                os.chown(self._base, *self._owner)
            register(self)
        return self._base

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self.base_dir / "data"

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self.base_dir / "postgresql.log"

    @property
    def pid(self) -> int | None:
        """Postmaster pid if it is alive (a frozen postmaster counts as alive), else None."""
        if self._base is None:
            return None
        pid = read_pid_file(self.datadir / "postmaster.pid")
        return pid if pid is not None and is_alive(pid) else None

    @property
    def running(self) -> bool:
        """True if the postmaster process exists (it may be frozen)."""
        return self.pid is not None

    @property
    def frozen(self) -> bool:
        """True if the postmaster or a process frozen by :meth:`freeze` is stopped (SIGSTOP)."""
        pid = self.pid
        return (pid is not None and is_stopped(pid)) or any(is_stopped(p) for p in self._frozen)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Initialise the cluster on first use, start it and wait until ``pg_isready`` accepts connections."""
        if self.running:
            return
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        self._clear_stale_pid_file()
        attempts = 1 if (self._started_once or self._port_fixed) else 4
        for attempt in range(attempts):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            proc = self._run_as_owner(
                [
                    str(self.bindir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    str(int(self._start_timeout)),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_path),
                    "-o",
                    f"-p {self.port}",
                ],
                check=False,
            )
            if proc.returncode == 0:
                break
            new_log = self._read_log(log_size)
            if "Address already in use" in new_log and attempt + 1 < attempts:
                self._port = free_port(self.host)
                continue
            raise ServerError(f"pg_ctl start failed (rc={proc.returncode}): {proc.stdout}{proc.stderr}\n{new_log}")
        self._wait_ready()
        if not self._started_once:
            self._started_once = True
            self.set_password(SECURED_ROLE, SECURED_PASSWORD)

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

    def freeze(self) -> None:
        """SIGSTOP the postmaster and all its children: connects and queries hang (the kernel still accepts TCP)."""
        pid = self.pid
        if pid is None:
            raise ServerError("cannot freeze: PostgreSQL is not running")
        os.kill(pid, signal.SIGSTOP)
        frozen = {pid}
        # Backends setsid(), so a process-group signal would miss them: signal every child of the postmaster.
        # Scan twice: a child forked just before the postmaster stopped shows up on the second scan.
        for _ in range(2):
            kids = set(children_of(pid)) - frozen
            send_signal(kids, signal.SIGSTOP)
            frozen |= kids
        self._frozen = sorted(frozen)
        wait_until(lambda: all(is_stopped(p) or not is_alive(p) for p in frozen), 5)

    def thaw(self) -> None:
        """SIGCONT everything :meth:`freeze` stopped (and any stopped child of the postmaster)."""
        pid = self.pid
        pids = set(self._frozen)
        if pid is not None:
            pids |= set(children_of(pid))
        send_signal(sorted(pids - {pid or -1}), signal.SIGCONT)
        if pid is not None:
            send_signal([pid], signal.SIGCONT)
        self._frozen = []

    def ensure_running(self) -> None:
        """Bring the server back to a usable state after a test froze, stopped or killed it."""
        if self.frozen:
            self.thaw()
        if not self.running:
            self.start()

    def cleanup(self) -> None:
        """Stop the server (immediate; SIGKILL if needed) and delete its temp dir. Idempotent."""
        if self._base is None:
            return
        with contextlib.suppress(Exception):
            if self.frozen:
                self.thaw()
            if self.running:
                self.stop("immediate")
        with contextlib.suppress(Exception):
            self.kill()
        wait_dead(self._orphans, 10)
        shutil.rmtree(self._base, ignore_errors=True)
        self._base = None
        unregister(self)

    def __enter__(self) -> PostgresServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

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

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (for failure messages)."""
        return "\n".join(self._read_log(0).splitlines()[-lines:])

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
        hba = self.datadir / "pg_hba.conf"
        hba.write_text("\n".join(lines) + "\n")
        if self._owner:
            os.chown(hba, *self._owner)

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

    def _read_log(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""


def _kill_stale_cluster(base: Path) -> None:
    """Kill the postmaster (and children) of a cluster left behind by a dead test session."""
    pid = read_pid_file(base / "data" / "postmaster.pid")
    if pid is None or proc_state(pid) is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if str(base).encode() not in cmdline:
        return  # pid reused by something else
    kids = children_of(pid)
    send_signal([pid, *kids], signal.SIGKILL)
    send_signal([pid, *kids], signal.SIGCONT)
    wait_dead([pid, *kids], 5)

"""What the private test servers (PostgreSQL, Redis, PgBouncer) share: :class:`ManagedServer`.

A managed server is one server process on a free 127.0.0.1 port with a temp dir of its own, which holds its log and
pid file, is removed by :meth:`ManagedServer.cleanup` (also at interpreter exit) and is reaped by the next session if
this one dies. The base class keeps that bookkeeping, the process state (``pid``, ``running``, ``frozen``), fault
injection (:meth:`~ManagedServer.kill`, :meth:`~ManagedServer.freeze`, :meth:`~ManagedServer.thaw`), the start loop
(a first start moves to another port if its port was taken meanwhile) and :meth:`~ManagedServer.ensure_running`.
A subclass sets its names (:attr:`~ManagedServer.name`, :attr:`~ManagedServer.dir_prefix`,
:attr:`~ManagedServer.log_name`, :attr:`~ManagedServer.pid_file`) and says what differs:

* how to spawn the server and know it is ready: :meth:`~ManagedServer._spawn_and_wait` (a server running in the
  foreground as our child uses :meth:`~ManagedServer._popen` and :meth:`~ManagedServer._wait_spawned`);
* how to stop it: :attr:`~ManagedServer.stop_signal`, or its own ``pid``, ``stop``, ``kill`` and
  :meth:`~ManagedServer._halt` for a server that is not our child (PostgreSQL, started by ``pg_ctl``).

All methods block: from async tests call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, Self

from .procs import (
    ServerBinaryMissing,
    ServerError,
    children_of,
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


def postgres_os_user(why: str) -> tuple[int, int] | None:
    """``(uid, gid)`` of the ``postgres`` OS user when the tests run as root, else None (run as ourselves).

    ``why`` is the reason a server cannot run as root, for the error raised when the user does not exist.
    """
    if os.geteuid() != 0:
        return None
    try:
        pw = pwd.getpwnam("postgres")
    except KeyError:
        raise ServerBinaryMissing(f"the 'postgres' OS user ({why})") from None
    return pw.pw_uid, pw.pw_gid


class ManagedServer:
    """A server process on a free 127.0.0.1 port, with a temp dir for its files (see the module docstring)."""

    host = "127.0.0.1"

    #: The server's name in error messages.
    name: ClassVar[str] = "server"
    #: Prefix of the temp dir's name; dirs with this prefix left by a dead session are reaped.
    dir_prefix: ClassVar[str]
    #: The server's log file, in the temp dir.
    log_name: ClassVar[str]
    #: The pid file the server writes, relative to the temp dir: finds the server a dead session left behind.
    pid_file: ClassVar[str]
    #: File in the temp dir that receives the stdout and stderr of the process :meth:`_popen` starts.
    output_name: ClassVar[str | None] = None
    #: Signal :meth:`stop` sends (SIGKILL follows if the server is still there 10 s later).
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: Whether :meth:`freeze` also stops the server's child processes (PostgreSQL's backends).
    freeze_children: ClassVar[bool] = False

    def __init__(self, *, port: int | None = None, start_timeout: float, owner: tuple[int, int] | None = None) -> None:
        self._port = port
        self._port_fixed = port is not None
        self._start_timeout = start_timeout
        #: ``(uid, gid)`` the server runs as and its files belong to (None: ourselves).
        self._owner = owner
        self._base: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_once = False
        self._frozen: list[int] = []
        #: More about why the last spawn failed than the log says (set by :meth:`_spawn_and_wait`).
        self._spawn_error = ""

    # ------------------------------------------------------------------ properties

    @property
    def port(self) -> int:
        """TCP port (fixed after the first start: restarts keep it)."""
        if self._port is None:
            self._port = free_port(self.host)
        return self._port

    @property
    def base_dir(self) -> Path:
        """Temp dir holding the server's files, its log and its pid file."""
        if self._base is None:
            reap_stale(self.dir_prefix, self._kill_stale)
            self._base = make_temp_dir(self.dir_prefix)
            if self._owner:
                os.chown(self._base, *self._owner)
            register(self)
        return self._base

    @property
    def log_path(self) -> Path:
        """The server log file."""
        return self.base_dir / self.log_name

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
        """True if the server process, or a process :meth:`freeze` stopped, is stopped by SIGSTOP."""
        pid = self.pid
        return (pid is not None and is_stopped(pid)) or any(is_stopped(p) for p in self._frozen)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the server (on the same port as before if it ran already) and wait until it is ready."""
        if self.running:
            return
        self._prepare()
        attempts = 1 if (self._started_once or self._port_fixed) else 4
        for attempt in range(attempts):
            log_size = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._spawn_error = ""
            if self._spawn_and_wait():
                break
            log = self._read_log(log_size)
            if "Address already in use" in log and attempt + 1 < attempts:
                self._port = free_port(self.host)
                continue
            detail = f" ({self._spawn_error})" if self._spawn_error else ""
            raise ServerError(f"{self.name} failed to start on port {self.port}{detail}:\n{log[-3000:]}")
        first, self._started_once = not self._started_once, True
        self._started(first)

    def stop(self) -> None:
        """Stop the server with :attr:`stop_signal` (SIGKILL if it is still there 10 s later); thaws it first."""
        if self.frozen:
            self.thaw()
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(self.stop_signal)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL the server (a crash): clients see their connections reset/closed at once."""
        proc, self._proc = self._proc, None
        self._frozen = []
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)

    def freeze(self) -> None:
        """SIGSTOP the server: requests and new connections hang (the kernel still completes TCP handshakes)."""
        pid = self.pid
        if pid is None:
            raise ServerError(f"cannot freeze: {self.name} is not running")
        os.kill(pid, signal.SIGSTOP)
        frozen = {pid}
        if self.freeze_children:
            # Children may have called setsid() (PostgreSQL's backends do), so a process-group signal would miss
            # them: signal each. Scan twice: a child forked just before the parent stopped shows up the second time.
            for _ in range(2):
                kids = set(children_of(pid)) - frozen
                send_signal(kids, signal.SIGSTOP)
                frozen |= kids
        self._frozen = sorted(frozen)
        wait_until(lambda: all(is_stopped(p) or not is_alive(p) for p in frozen), 5)

    def thaw(self) -> None:
        """SIGCONT everything :meth:`freeze` stopped (children before the server itself)."""
        pid = self.pid
        pids = set(self._frozen)
        if pid is not None:
            if self.freeze_children:
                pids |= set(children_of(pid))
            pids.discard(pid)
        send_signal(sorted(pids), signal.SIGCONT)
        if pid is not None:
            send_signal([pid], signal.SIGCONT)
        self._frozen = []

    def ensure_running(self) -> None:
        """Bring the server back after a test froze, stopped, killed or reconfigured it.

        Thaws it; a running server that is not :meth:`_responsive` is killed; then it is started if it is not running.
        """
        if self.frozen:
            self.thaw()
        if self.running:
            if self._responsive():
                return
            self.kill()
        self.start()

    def cleanup(self) -> None:
        """Stop the server (see :meth:`_halt`) and delete its temp dir. Idempotent."""
        with contextlib.suppress(Exception):
            self.thaw()
        with contextlib.suppress(Exception):
            self._halt()
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None
        unregister(self)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log (and of its stdout/stderr), for failure messages."""
        return "\n".join(self._read_log(0).splitlines()[-lines:])

    # ------------------------------------------------------------------ what subclasses provide

    def _spawn_and_wait(self) -> bool:
        """Spawn the server on :attr:`port` and wait until it is ready: True, or False if it did not come up.

        On False, :meth:`start` reads the log: "Address already in use" on a first start means another port is tried.
        """
        raise NotImplementedError

    def _prepare(self) -> None:
        """Run by :meth:`start` before spawning (e.g. create the data dir)."""

    def _started(self, first: bool) -> None:
        """Run by :meth:`start` once the server is ready (``first``: for the first time)."""

    def _responsive(self) -> bool:
        """Whether a running, thawed server still answers as :meth:`ensure_running` needs (else it is restarted)."""
        return True

    def _halt(self) -> None:
        """Stop the server for good, as fast as possible: :meth:`cleanup` runs it."""
        self.kill()

    # ------------------------------------------------------------------ helpers for subclasses

    def _popen(self, args: Sequence[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> None:
        """Start ``args`` as :attr:`_proc` in a session of its own, output appended to :attr:`output_name`.

        Its own session: a Ctrl-C in the terminal must not kill it behind the fixtures' back. It runs as the owner.
        """
        with (self.base_dir / (self.output_name or "output.log")).open("ab") as out:
            self._proc = subprocess.Popen(
                list(args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                cwd=cwd,
                env=env,
                user=self._owner[0] if self._owner else None,
                group=self._owner[1] if self._owner else None,
                extra_groups=[] if self._owner else None,
            )

    def _wait_spawned(self, ready: Callable[[], bool], interval: float = 0.02) -> bool:
        """Poll ``ready`` until it is true (True); False if :attr:`_proc` exits or does not get ready in time (killed).

        OSError and ServerError from ``ready`` count as not ready yet.
        """
        proc = self._proc
        if proc is None:
            return False
        deadline = time.monotonic() + self._start_timeout
        while proc.poll() is None:
            with contextlib.suppress(OSError, ServerError):
                if ready():
                    return True
            if time.monotonic() > deadline:
                self.kill()
                return False
            time.sleep(interval)
        proc.wait()
        self._proc = None
        return False

    def _write_file(self, path: Path, text: str) -> None:
        """Write ``text`` to ``path``, owned by the server's user."""
        path.write_text(text)
        if self._owner:
            os.chown(path, *self._owner)

    def _read_log(self, offset: int) -> str:
        """The server log from byte ``offset`` on, then all the process's stdout/stderr."""
        text = ""
        sources = [(self.log_path, offset)]
        if self.output_name:
            sources.append((self.base_dir / self.output_name, 0))
        for path, start in sources:
            with contextlib.suppress(OSError), path.open("rb") as f:
                f.seek(start)
                text += f.read().decode(errors="replace")
        return text

    @classmethod
    def _kill_stale(cls, base: Path) -> None:
        """Kill the server (and its children) that a dead test session left running in ``base``."""
        pid = read_pid_file(base / cls.pid_file)
        if pid is None or not is_alive(pid) or not _runs_in(pid, base):
            return
        pids = [pid, *children_of(pid)]
        send_signal(pids, signal.SIGKILL)
        send_signal(pids, signal.SIGCONT)
        wait_dead(pids, 5)


def _runs_in(pid: int, base: Path) -> bool:
    """Whether ``pid`` works in ``base`` or names it on its command line (if not, the pid was reused)."""
    with contextlib.suppress(OSError):
        cwd = os.readlink(f"/proc/{pid}/cwd")
        if cwd == str(base) or cwd.startswith(f"{base}/"):
            return True
    with contextlib.suppress(OSError):
        return str(base).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False

"""Process, port and clean-up helpers shared by the private test servers.

Everything here is synchronous and Linux-specific (it reads ``/proc``).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import os
import random
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol


class ServerBinaryMissing(RuntimeError):
    """A server binary needed by the test suite is not installed."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found: run scripts/setup.sh to install the test servers")


class ServerError(RuntimeError):
    """A private test server could not be started, stopped or queried."""


# --------------------------------------------------------------------------- /proc


def proc_state(pid: int) -> tuple[str, int] | None:
    """Return ``(state, ppid)`` of ``pid`` from ``/proc/<pid>/stat``, or None if it does not exist.

    States: R running, S sleeping, T stopped (SIGSTOP), Z zombie (dead, not reaped yet), ...
    """
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself contain spaces or ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return fields[0].decode(), int(fields[1])


def proc_start_time(pid: int) -> int | None:
    """Return the start time (clock ticks since boot) of ``pid``, or None: identifies a process despite pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


def is_alive(pid: int) -> bool:
    """Return True if ``pid`` exists and is not a zombie."""
    st = proc_state(pid)
    return st is not None and st[0] != "Z"


def is_stopped(pid: int) -> bool:
    """Return True if ``pid`` is stopped by a signal (SIGSTOP)."""
    st = proc_state(pid)
    return st is not None and st[0] in ("T", "t")


def children_of(pid: int) -> list[int]:
    """Return the live (non-zombie) direct children of ``pid``.

    Works for PostgreSQL backends although they call setsid(): they leave the postmaster's session
    and process group, but their parent stays the postmaster.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = proc_state(int(name))
        if st is not None and st[1] == pid and st[0] != "Z":
            found.append(int(name))
    return found


def send_signal(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to every pid, ignoring those that have already exited."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def wait_dead(pids: Iterable[int], timeout: float) -> bool:
    """Wait until no pid in ``pids`` is alive (exited or zombie); return False on timeout."""
    pids = list(pids)
    return wait_until(lambda: not any(is_alive(p) for p in pids), timeout)


# --------------------------------------------------------------------------- ports

_handed_out: set[int] = set()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return True if a listening socket could bind ``host:port`` right now (no SO_REUSEADDR: strict)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """Pick a free TCP port on ``host`` for a server that must be restartable on the same port.

    The port is drawn at random from 20000..(start of the kernel's ephemeral range), so outgoing
    connections (whose local ports come from the ephemeral range) cannot take it while the server is
    down between a stop and a restart, and two concurrent test sessions rarely pick the same one.
    It is checked with a strict bind and never handed out twice by this process. A small window
    remains between the check and the server's own bind: callers retry with a new port on EADDRINUSE.
    """
    low = 20000
    high = max(low + 1000, _ephemeral_range()[0] - 1)
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(low, high)
        if port in _handed_out or not port_is_free(port, host):
            continue
        _handed_out.add(port)
        return port
    raise ServerError(f"no free port found in {low}..{high}")


# --------------------------------------------------------------------------- clean-up registry


class _Cleanable(Protocol):
    def cleanup(self) -> None: ...


_live: set[_Cleanable] = set()


def register(server: _Cleanable) -> None:
    """Make sure ``server.cleanup()`` runs at interpreter exit even if the test session is interrupted."""
    _live.add(server)


def unregister(server: _Cleanable) -> None:
    """Forget a server that has been cleaned up."""
    _live.discard(server)


@atexit.register
def cleanup_all() -> None:
    """Clean up every registered server (runs at exit; safe to call more than once)."""
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.cleanup()


# --------------------------------------------------------------------------- temp dirs and stale sessions

_OWNER_FILE = "owner"


def make_temp_dir(prefix: str) -> Path:
    """Create a temp dir that records its owning process, so a later session can reap it if we crash."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    (path / _OWNER_FILE).write_text(f"{os.getpid()} {proc_start_time(os.getpid())}\n")
    return path


def _owner_alive(path: Path) -> bool:
    try:
        pid_s, start_s = (path / _OWNER_FILE).read_text().split()
    except (OSError, ValueError):
        # No owner file yet (being created) or unreadable: leave it alone unless it is old.
        with contextlib.suppress(OSError):
            return time.time() - path.stat().st_mtime < 3600
        return False
    return is_alive(int(pid_s)) and str(proc_start_time(int(pid_s))) == start_s


def reap_stale(prefix: str, kill_server: Callable[[Path], None]) -> list[Path]:
    """Kill the servers and delete the temp dirs left by test sessions that died without cleaning up.

    Only dirs named ``<tmp>/<prefix>*`` whose owning process is gone are touched.
    """
    reaped = []
    for path in Path(tempfile.gettempdir()).glob(prefix + "*"):
        if not path.is_dir() or _owner_alive(path):
            continue
        with contextlib.suppress(Exception):
            kill_server(path)
        shutil.rmtree(path, ignore_errors=True)
        reaped.append(path)
    return reaped


def read_pid_file(path: Path) -> int | None:
    """Return the pid on the first line of a pid file, or None."""
    try:
        return int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None

"""run_service in a real process: SIGTERM/SIGINT give exit 0 with every client closed; an exception gives 1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from support.leaks import eventually, pg_backend_count

APP = Path(__file__).with_name("daemon_app.py")


async def _start(
    tmp_path: Path, mode: str, env: dict[str, str] | None = None
) -> tuple[asyncio.subprocess.Process, Path]:
    journal = tmp_path / "journal.txt"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(APP),
        str(journal),
        mode,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    return proc, journal


def _events(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


async def _wait_ready(proc: asyncio.subprocess.Process, journal: Path) -> None:
    async def ready() -> bool:
        return "ready" in _events(journal) or proc.returncode is not None

    assert await eventually(ready, timeout=30, interval=0.05)
    assert proc.returncode is None, _events(journal)


async def _finish(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, stderr.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
async def test_a_signal_gives_exit_0_after_cancelling_the_task_then_closing_every_client(
    tmp_path: Path, pg_dsn: str, sig: signal.Signals
) -> None:
    proc, journal = await _start(
        tmp_path, "serve", {"POSTGRES_DSN": pg_dsn, "POSTGRES_APPLICATION_NAME": "ts-daemon-app"}
    )
    await _wait_ready(proc, journal)
    assert await pg_backend_count(pg_dsn, "ts-daemon-app") >= 1
    proc.send_signal(sig)
    code, stderr = await _finish(proc)
    events = _events(journal)
    assert code == 0, stderr
    assert "loop uvloop" in events  # uvloop is installed in the dev environment
    assert events[events.index("ready") + 1 :] == ["task cancelled", "close last", "close postgres", "close first"]
    assert f"daemon-app stopping: received {sig.name}" in stderr
    assert "daemon-app stopped (exit code 0)" in stderr

    async def no_backends() -> bool:
        return await pg_backend_count(pg_dsn, "ts-daemon-app") == 0

    assert await eventually(no_backends, timeout=5)


async def test_an_exception_in_the_service_gives_a_non_zero_exit_and_closed_clients(tmp_path: Path) -> None:
    proc, journal = await _start(tmp_path, "fail")
    code, stderr = await _finish(proc)
    events = _events(journal)
    assert code == 1, stderr
    assert events[events.index("ready") + 1 :] == ["close last", "close first"]
    assert "failed (RuntimeError)" in stderr
    assert "the service broke" not in stderr  # the type is logged, never the message
    assert "daemon-app stopped (exit code 1)" in stderr


async def test_a_client_that_cannot_connect_gives_a_non_zero_exit(tmp_path: Path) -> None:
    env = {
        "POSTGRES_DSN": "postgresql://postgres@127.0.0.1:1/none",
        "POSTGRES_CONNECT_TIMEOUT": "0.5",
        "POSTGRES_RETRY__MAX_ATTEMPTS": "2",
        "POSTGRES_RETRY__DEADLINE": "2",
    }
    proc, journal = await _start(tmp_path, "serve", env)
    code, stderr = await _finish(proc)
    assert code == 1, stderr
    assert "ready" not in _events(journal)
    assert "a client failed to connect" in stderr
    assert sorted(e for e in _events(journal) if e.startswith("close")) == [
        "close first",
        "close last",
        "close postgres",
    ]

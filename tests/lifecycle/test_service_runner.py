"""Service in-process: stop reasons, exit codes, and tasks cancelled BEFORE their clients are closed."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

import pytest
from lifecycle_fakes import FakeClient, Journal

from trading_shared import Service


def _service(journal: Journal, *mains: object, **kwargs: object) -> Service:
    clients = [FakeClient("a", journal), FakeClient("b", journal)]
    return Service(list(mains), *clients, name="svc", signals=(), **kwargs)  # type: ignore[arg-type]


def _forever(journal: Journal, name: str, started: asyncio.Event | None = None):  # type: ignore[no-untyped-def]
    async def run() -> None:
        journal.events.append(("task-started", name))
        if started is not None:
            started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            journal.events.append(("task-cancelled", name))
            raise

    return run


async def test_stop_cancels_the_tasks_before_closing_the_clients_and_exits_0() -> None:
    journal = Journal()
    started = asyncio.Event()
    service = _service(journal, _forever(journal, "t1", started), _forever(journal, "t2"))
    runner = asyncio.create_task(service.run())
    await started.wait()
    assert journal.of("connected") == ["a", "b"] or journal.of("connected") == ["b", "a"]
    service.stop("test asked")
    assert await runner == 0
    kinds = [k for k, _ in journal.events]
    last_cancel = max(i for i, k in enumerate(kinds) if k == "task-cancelled")
    first_close = kinds.index("close")
    assert last_cancel < first_close
    assert sorted(journal.of("task-cancelled")) == ["t1", "t2"]
    assert journal.of("close") == ["b", "a"]
    assert service.reason == "test asked" and service.failure is None


async def test_an_exception_in_a_task_gives_exit_1_cancels_the_others_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()

    async def broken() -> None:
        await asyncio.sleep(0.05)
        raise ZeroDivisionError("bad tick")

    service = _service(journal, broken, _forever(journal, "other"))
    with caplog.at_level(logging.INFO, logger="trading_shared.service"):
        assert await service.run() == 1
    assert journal.of("task-cancelled") == ["other"]
    assert journal.of("close") == ["b", "a"]
    assert isinstance(service.failure, ZeroDivisionError)
    assert "task svc:test_an_exception_in_a_task_gives_exit_1_cancels_the_others_and_closes.<locals>.broken failed" in (
        caplog.text
    )
    assert "(ZeroDivisionError)" in caplog.text  # the type is logged...
    assert "bad tick" not in caplog.text  # ...never the message: driver messages can quote parameters
    assert "stopped (exit code 1)" in caplog.text


async def test_every_task_returning_is_a_clean_exit() -> None:
    journal = Journal()

    async def once() -> None:
        journal.events.append(("task-done", "once"))

    service = _service(journal, once)
    assert await service.run() == 0
    assert service.reason == "every task finished"
    assert journal.events[-2:] == [("close", "b"), ("close", "a")]


async def test_a_connect_failure_gives_exit_1_and_never_starts_the_tasks() -> None:
    journal = Journal()
    ran = False

    async def main() -> None:
        nonlocal ran
        ran = True

    good = FakeClient("good", journal)
    bad = FakeClient("bad", journal, connect_error=ConnectionRefusedError("no server"))
    service = Service(main, good, bad, signals=())
    assert await service.run() == 1
    assert not ran
    assert isinstance(service.failure, ConnectionRefusedError)
    assert journal.of("close") == ["bad", "good"]


async def test_stop_during_connect_is_a_clean_exit_and_closes_what_was_opened() -> None:
    journal = Journal()
    ran = False

    async def main() -> None:
        nonlocal ran
        ran = True

    fast, slow = FakeClient("fast", journal), FakeClient("slow", journal, connect_delay=10)
    service = Service(main, fast, slow, signals=())
    runner = asyncio.create_task(service.run())
    await asyncio.sleep(0.05)
    service.stop("SIGTERM during start-up")
    assert await runner == 0
    assert not ran
    assert journal.of("close") == ["slow", "fast"]


async def test_a_task_that_ignores_cancellation_is_a_failure_after_shutdown_timeout() -> None:
    journal = Journal()
    started = asyncio.Event()
    release = asyncio.Event()

    async def stubborn() -> None:
        started.set()
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                journal.events.append(("ignored-cancel", "stubborn"))
                await release.wait()

    service = _service(journal, stubborn, shutdown_timeout=0.2)
    runner = asyncio.create_task(service.run())
    await started.wait()
    service.stop()
    assert await runner == 1
    assert "ignored cancellation" in (service.reason or "")
    assert journal.of("close") == ["b", "a"]  # the clients are closed anyway
    release.set()
    await asyncio.sleep(0.01)


async def test_cancelling_run_itself_still_cancels_tasks_before_closing() -> None:
    journal = Journal()
    started = asyncio.Event()
    service = _service(journal, _forever(journal, "t", started))
    runner = asyncio.create_task(service.run())
    await started.wait()
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    kinds = [k for k, _ in journal.events]
    assert kinds.index("task-cancelled") < kinds.index("close")
    assert journal.of("close") == ["b", "a"]


async def test_a_signal_stops_it_cleanly_and_the_previous_handler_is_restored() -> None:
    journal = Journal()
    started = asyncio.Event()
    seen: list[int] = []

    def previous(signum: int, frame: object) -> None:
        seen.append(signum)

    old = signal.signal(signal.SIGUSR1, previous)
    try:
        service = Service(_forever(journal, "t", started), FakeClient("a", journal), signals=(signal.SIGUSR1,))
        runner = asyncio.create_task(service.run())
        await started.wait()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert await asyncio.wait_for(runner, 5) == 0
        assert service.reason == "received SIGUSR1"
        assert seen == []  # the service handled it, not the previous handler
        assert signal.getsignal(signal.SIGUSR1) is previous
    finally:
        signal.signal(signal.SIGUSR1, old)


def test_a_service_needs_a_coroutine_function() -> None:
    with pytest.raises(ValueError, match="at least one"):
        Service([])

"""Resources: connect all, close all in reverse order, on success, error, cancellation and failed connects."""

from __future__ import annotations

import asyncio
import logging

import pytest
from lifecycle_fakes import FakeClient, Journal

from support.leaks import eventually, pg_backend_count
from trading_shared import ManagedClient, PostgresClient, PostgresSettings, Resources, ServiceUnavailableError


def _clients(journal: Journal, *names: str, **kwargs: object) -> list[FakeClient]:
    return [FakeClient(name, journal, **kwargs) for name in names]  # type: ignore[arg-type]


async def test_connects_all_and_closes_in_reverse_order() -> None:
    journal = Journal()
    a, b, c = _clients(journal, "a", "b", "c")
    async with Resources(a, b, c) as (x, y, z):
        assert (x, y, z) == (a, b, c)
        assert a.connected and b.connected and c.connected
        assert journal.of("close") == []
    assert journal.of("close") == ["c", "b", "a"]
    assert not (a.connected or b.connected or c.connected)


async def test_connects_concurrently() -> None:
    journal = Journal()
    clients = _clients(journal, "a", "b", "c", "d", connect_delay=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Resources(*clients):
        elapsed = loop.time() - started
    assert elapsed < 0.6, elapsed


async def test_closes_all_in_reverse_order_when_the_body_raises() -> None:
    journal = Journal()
    a, b = _clients(journal, "a", "b")
    with pytest.raises(KeyError, match="boom"):
        async with Resources(a, b):
            raise KeyError("boom")
    assert journal.of("close") == ["b", "a"]


async def test_closes_all_when_the_body_is_cancelled() -> None:
    journal = Journal()
    a, b = _clients(journal, "a", "b")
    inside = asyncio.Event()

    async def body() -> None:
        async with Resources(a, b):
            inside.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal.of("close") == ["b", "a"]


async def test_close_completes_although_a_second_cancellation_arrives_while_closing() -> None:
    journal = Journal()
    slow_close = asyncio.Event()

    class SlowClose(FakeClient):
        async def close(self) -> None:
            await super().close()
            slow_close.set()
            await asyncio.sleep(0.2)
            journal.events.append(("closed", self.name))

    a, b = FakeClient("a", journal), SlowClose("b", journal)

    async def body() -> None:
        async with Resources(a, b):
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await asyncio.sleep(0.05)
    task.cancel()
    await slow_close.wait()
    task.cancel()  # the second one, while b is closing
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal.of("close") == ["b", "a"]
    assert journal.of("closed") == ["b"]


async def test_a_failing_connect_closes_the_others_and_raises_the_original_error() -> None:
    journal = Journal()
    error = ServiceUnavailableError("down", operation="connect", attempts=3, may_have_been_applied=False)
    fast = FakeClient("fast", journal)
    failing = FakeClient("failing", journal, connect_delay=0.05, connect_error=error)
    slow = FakeClient("slow", journal, connect_delay=10)
    body_ran = False
    with pytest.raises(ServiceUnavailableError) as caught:
        async with Resources(fast, failing, slow):
            body_ran = True
    assert caught.value is error
    assert not body_ran
    assert journal.of("connect-cancelled") == ["slow"]  # still connecting: cancelled, not waited for
    assert journal.of("close") == ["slow", "failing", "fast"]
    assert not fast.connected


async def test_cancellation_during_connect_closes_everything_started() -> None:
    journal = Journal()
    a = FakeClient("a", journal)
    b = FakeClient("b", journal, connect_delay=10)
    task = asyncio.create_task(Resources(a, b).connect())
    await asyncio.sleep(0.05)
    assert a.connected
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert journal.of("connect-cancelled") == ["b"]
    assert journal.of("close") == ["b", "a"]
    assert not a.connected


async def test_close_errors_are_logged_and_never_mask_the_original(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    a = FakeClient("a", journal, close_error=RuntimeError("close a failed"))
    b = FakeClient("b", journal, close_error=OSError("close b failed"))
    with caplog.at_level(logging.ERROR, logger="trading_shared.lifecycle"), pytest.raises(ValueError, match="body"):
        async with Resources(a, b):
            raise ValueError("body")
    assert journal.of("close") == ["b", "a"]  # a is closed although b's close failed
    logged = [r for r in caplog.records if r.name == "trading_shared.lifecycle"]
    assert [r.exc_info[1] for r in logged if r.exc_info] == [b.close_error, a.close_error]


async def test_close_errors_without_an_original_error_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    journal = Journal()
    a = FakeClient("a", journal, close_error=RuntimeError("close failed"))
    with caplog.at_level(logging.ERROR, logger="trading_shared.lifecycle"):
        async with Resources(a):
            pass
    assert "close of FakeClient failed" in caplog.text


async def test_a_hanging_close_is_abandoned_after_close_timeout_and_the_rest_still_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    journal = Journal()
    a = FakeClient("a", journal)
    hangs = FakeClient("hangs", journal, close_hangs=True)
    with caplog.at_level(logging.ERROR, logger="trading_shared.lifecycle"):
        async with Resources(a, hangs, close_timeout=0.1):
            pass
    assert journal.of("close") == ["hangs", "a"]
    assert "did not finish within 0.1s" in caplog.text


async def test_close_is_idempotent_and_resources_can_be_entered_again() -> None:
    journal = Journal()
    (a,) = _clients(journal, "a")
    res = Resources(a)
    await res.close()  # never connected: nothing to close
    assert journal.of("close") == []
    async with res:
        pass
    await res.close()
    async with res:
        pass
    assert journal.of("connect") == ["a", "a"]
    assert journal.of("close") == ["a", "a"]


async def test_connect_twice_without_close_is_an_error() -> None:
    journal = Journal()
    res = Resources(*_clients(journal, "a"))
    async with res:
        with pytest.raises(RuntimeError, match="already connected"):
            await res.connect()


async def test_groups_nest_and_anything_with_connect_and_close_qualifies() -> None:
    journal = Journal()
    a, b, c = _clients(journal, "a", "b", "c")
    inner = Resources(b, c)
    assert isinstance(inner, ManagedClient)
    async with Resources(a, inner):
        pass
    assert journal.of("close") == ["c", "b", "a"]


def test_objects_without_connect_and_close_are_rejected() -> None:
    with pytest.raises(TypeError, match="int has no async connect"):
        Resources(42)


async def test_with_a_real_postgres_client_no_connection_is_left_behind(pg_dsn: str) -> None:
    settings = PostgresSettings(dsn=pg_dsn, application_name="ts-lifecycle", min_size=2)
    async with Resources(PostgresClient(settings)) as (pg,):
        assert await pg.fetchval("SELECT 1") == 1
        assert await pg_backend_count(pg_dsn, "ts-lifecycle") >= 1
    assert pg.pool is None

    async def gone() -> bool:
        return await pg_backend_count(pg_dsn, "ts-lifecycle") == 0

    assert await eventually(gone)


async def test_a_real_client_failing_to_connect_closes_the_connected_one(pg_dsn: str) -> None:
    journal = Journal()
    fake = FakeClient("fake", journal)
    unreachable = PostgresClient(
        PostgresSettings(
            dsn="postgresql://postgres@127.0.0.1:1/x",
            connect_timeout=0.5,
            retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01, "jitter": 0, "deadline": 2},
        )
    )
    with pytest.raises(ServiceUnavailableError) as caught:
        async with Resources(fake, unreachable):
            pass
    assert isinstance(caught.value, ConnectionError)
    assert journal.of("close") == ["fake"]
    assert not fake.connected

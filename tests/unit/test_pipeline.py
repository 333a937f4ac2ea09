"""The call pipeline's rules, with scripted attempts (pure logic: no server) and in-memory OpenTelemetry."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import ClassVar

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from trading_shared import (
    BreakerSettings,
    CircuitOpenError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PoolExhaustedError,
    RetrySettings,
    ServiceUnavailableError,
    set_testing,
)
from trading_shared.resilience import BreakerState, Fault
from trading_shared.resilience import retry as retry_policy
from trading_shared.resilience.breaker import CircuitBreaker
from trading_shared.resilience.deadline import CALL_DEADLINE, enclosing_deadline
from trading_shared.resilience.faults import RequestNotSent
from trading_shared.resilience.pipeline import CallPipeline
from trading_shared.telemetry import ClientTelemetry, names


class Lost(Exception):
    """Stands for a connection lost after sending."""


class Refused(Exception):
    """Stands for a connection refused."""


class Caller(Exception):
    """Stands for a syntax error."""


class Conflict(Exception):
    """Stands for a serialization failure."""


class Exhausted(Exception):
    """Stands for an exhausted pool."""


class FakeErrors:
    table: ClassVar[dict[type[BaseException], Fault]] = {
        Lost: Fault.INDETERMINATE,
        Refused: Fault.UNAVAILABLE,
        Caller: Fault.CALLER,
        Conflict: Fault.CONFLICT,
        Exhausted: Fault.POOL_EXHAUSTED,
    }

    def classify(self, exc: BaseException) -> Fault:
        return self.table.get(type(exc), Fault.CALLER)

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        return type(exc).__name__, None


class Harness:
    def __init__(self, *, attempts: int = 3, deadline: float = 5.0, fail_max: int = 100) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        self.telemetry = ClientTelemetry(
            system="postgresql", pool_name="p", namespace="db", address="127.0.0.1", port=5432,
            tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[self.reader]),
        )  # fmt: skip
        self.breaker = CircuitBreaker(BreakerSettings(fail_max=fail_max, reset_timeout=60), "p")
        retry = RetrySettings(max_attempts=attempts, initial_backoff=0.001, max_backoff=0.002, jitter=0.001,
                              deadline=deadline)  # fmt: skip
        self.pipeline = CallPipeline(retry=retry, breaker=self.breaker, errors=FakeErrors(), telemetry=self.telemetry)
        self.calls = 0

    def script(self, *outcomes: BaseException | str) -> Callable[[], Awaitable[str]]:
        async def attempt() -> str:
            outcome = outcomes[min(self.calls, len(outcomes) - 1)]
            self.calls += 1
            await asyncio.sleep(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return attempt

    def points(self, metric: str) -> list[tuple[dict[str, object], float]]:
        data = self.reader.get_metrics_data()
        found = []
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == metric:
                        for p in m.data.data_points:
                            value = getattr(p, "value", None)
                            found.append((dict(p.attributes), value if value is not None else p.count))
        return found


async def test_success_first_time_has_one_span_and_one_duration_point() -> None:
    h = Harness()
    assert await h.pipeline.call("fetchrow", h.script("row"), idempotent=True) == "row"
    (span,) = h.spans.get_finished_spans()
    assert span.name == "fetchrow db"
    assert span.attributes[names.DB_OPERATION_NAME] == "fetchrow"
    assert span.status.status_code is StatusCode.UNSET
    assert h.points(names.OPERATION_DURATION)[0][0][names.DB_OPERATION_NAME] == "fetchrow"


async def test_caller_error_is_raised_unchanged_without_retry() -> None:
    h = Harness()
    err = Caller("syntax")
    with pytest.raises(Caller) as info:
        await h.pipeline.call("execute", h.script(err), idempotent=True)
    assert info.value is err
    assert h.calls == 1
    assert h.breaker.failure_count == 0
    (span,) = h.spans.get_finished_spans()
    assert span.attributes[names.ERROR_TYPE] == "Caller"


async def test_transient_failures_are_retried_then_succeed() -> None:
    h = Harness(attempts=3)
    assert await h.pipeline.call("fetch", h.script(Lost(), Refused(), "ok"), idempotent=True) == "ok"
    assert h.calls == 3
    (span,) = h.spans.get_finished_spans()
    assert span.attributes[names.ATTEMPTS] == 3
    assert [e.name for e in span.events] == [names.EVENT_ATTEMPT_FAILED] * 2
    retries = h.points(names.RETRIES)
    assert sum(v for _, v in retries) == 2
    assert {a[names.ERROR_TYPE] for a, _ in retries} == {"Lost", "Refused"}


async def test_exhausted_retries_raise_a_connection_error_chained_from_the_last_driver_error() -> None:
    h = Harness(attempts=3)
    last = Refused("down")
    with pytest.raises(ServiceUnavailableError) as info:
        await h.pipeline.call("fetch", h.script(Refused(), Refused(), last), idempotent=True)
    assert isinstance(info.value, ConnectionError)
    assert info.value.__cause__ is last
    assert info.value.attempts == 3
    assert info.value.may_have_been_applied is False
    assert h.breaker.failure_count == 1  # the breaker counts failed calls, not attempts


async def test_non_idempotent_write_is_never_resent_after_it_may_have_been_applied() -> None:
    h = Harness(attempts=5)
    with pytest.raises(OutcomeUnknownError) as info:
        await h.pipeline.call("execute", h.script(Lost(), "ok"), idempotent=False)
    assert h.calls == 1
    assert info.value.may_have_been_applied is True
    assert isinstance(info.value.__cause__, Lost)


async def test_request_not_sent_is_retried_even_for_non_idempotent_writes() -> None:
    h = Harness(attempts=3)
    original = Lost("connect failed")
    assert await h.pipeline.call("execute", h.script(RequestNotSent(original), "ok"), idempotent=False) == "ok"
    assert h.calls == 2


async def test_request_not_sent_surfaces_the_original_caller_error() -> None:
    h = Harness()
    original = Caller("bad password")
    with pytest.raises(Caller) as info:
        await h.pipeline.call("connect", h.script(RequestNotSent(original)), idempotent=True)
    assert info.value is original


async def test_conflicts_rerun_the_operation_and_leave_the_breaker_alone() -> None:
    h = Harness(attempts=3, fail_max=1)
    assert await h.pipeline.call("transaction", h.script(Conflict(), Conflict(), "ok"), idempotent=False) == "ok"
    assert h.breaker.state is BreakerState.CLOSED
    with pytest.raises(Conflict):
        await h.pipeline.call("transaction", h.script(Conflict()), idempotent=False)


async def test_pool_exhaustion_fails_fast_without_retry_or_breaker() -> None:
    h = Harness(attempts=5, fail_max=1)
    with pytest.raises(PoolExhaustedError):
        await h.pipeline.call("fetch", h.script(Exhausted()), idempotent=True)
    assert h.calls == 1
    assert h.breaker.state is BreakerState.CLOSED


async def test_breaker_counts_failed_calls_and_an_absorbed_blip_never_counts() -> None:
    h = Harness(attempts=3, fail_max=2)
    assert await h.pipeline.call("fetch", h.script(Refused(), Lost(), "ok"), idempotent=True) == "ok"
    assert h.breaker.failure_count == 0
    for _ in range(2):
        h.calls = 0
        with pytest.raises(ServiceUnavailableError):
            await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
    assert h.breaker.state is BreakerState.OPEN
    h.calls = 0
    started = time.perf_counter()
    with pytest.raises(CircuitOpenError):
        await h.pipeline.call("fetch", h.script("never"), idempotent=True)
    assert h.calls == 0
    assert time.perf_counter() - started < 0.01
    assert sum(v for _, v in h.points(names.BREAKER_REJECTIONS)) == 1
    transitions = h.points(names.BREAKER_TRANSITIONS)
    assert [a[names.BREAKER_STATE_ATTR] for a, v in transitions if v] == ["open"]
    assert {a[names.BREAKER_STATE_ATTR] for a, _ in transitions} == {"open", "half_open", "closed"}  # primed at 0


async def test_breaker_opening_mid_retries_stops_them_with_circuit_open() -> None:
    h = Harness(attempts=5, fail_max=1)

    async def fail_while_others_open_the_breaker() -> str:
        h.calls += 1
        h.breaker.record_failure(h.breaker.admit("other"))  # another call gave up meanwhile
        raise Refused("down")

    with pytest.raises(CircuitOpenError) as info:
        await h.pipeline.call("fetch", fail_while_others_open_the_breaker, idempotent=True)
    assert h.calls == 1
    assert isinstance(info.value.__cause__, Refused)
    assert info.value.attempts == 1


async def test_deadline_cuts_a_hung_attempt_and_counts_as_infrastructure_failure() -> None:
    h = Harness(attempts=3, deadline=0.2)

    async def hang() -> str:
        await asyncio.sleep(30)
        return "never"

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as info:
        await h.pipeline.call("fetch", hang, idempotent=True)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.4
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ConnectionError)
    assert h.breaker.failure_count == 1
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0


async def test_caller_cancellation_propagates_and_is_neutral_for_the_breaker() -> None:
    h = Harness(fail_max=1)
    started = asyncio.Event()

    async def slow() -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    task = asyncio.create_task(h.pipeline.call("fetch", slow, idempotent=True))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert h.breaker.state is BreakerState.CLOSED
    assert h.breaker.failure_count == 0
    (span,) = h.spans.get_finished_spans()
    assert span.attributes[names.ERROR_TYPE] == names.ERROR_CANCELLED
    assert names.EVENT_CANCELLED in [e.name for e in span.events]


async def test_testing_mode_removes_waits_and_caps_attempts() -> None:
    h = Harness(attempts=5)
    h.pipeline.policy.settings.model_copy()
    set_testing(True, attempts=2)
    try:
        with pytest.raises(ServiceUnavailableError):
            await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
    finally:
        set_testing(False)
    assert h.calls == 2


async def test_testing_mode_as_a_context_manager_restores_the_mode_before() -> None:
    h = Harness(attempts=5)
    with set_testing(True, attempts=3):
        with set_testing(True, attempts=1), pytest.raises(ServiceUnavailableError):
            await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
        assert h.calls == 1
        with pytest.raises(ServiceUnavailableError):
            await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
        assert h.calls == 1 + 3  # the outer mode is back
    assert not retry_policy.testing_enabled()
    with pytest.raises(ValueError, match="attempts"):
        set_testing(True, attempts=0)
    assert not retry_policy.testing_enabled()


async def test_telemetry_failure_never_breaks_a_call() -> None:
    h = Harness()

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("exporter bug")

    instruments = h.telemetry.instruments()
    assert instruments is not None
    instruments.duration.record = boom  # type: ignore[method-assign]
    assert await h.pipeline.call("fetch", h.script("ok"), idempotent=True) == "ok"


class Boom(BaseException):
    """Stands for SystemExit / GeneratorExit reaching an attempt."""


async def test_a_base_exception_in_the_trial_frees_the_trial_slot() -> None:
    h = Harness(attempts=1, fail_max=1)
    with pytest.raises(ServiceUnavailableError):
        await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
    assert h.breaker.state is BreakerState.OPEN
    h.breaker._opened_at -= 120  # the reset timeout has passed
    with pytest.raises(Boom):
        await h.pipeline.call("fetch", h.script(Boom()), idempotent=True)
    assert await h.pipeline.call("fetch", h.script("ok"), idempotent=True) == "ok"  # next call is the trial
    assert h.breaker.state is BreakerState.CLOSED


async def test_errors_of_other_clients_inside_an_attempt_are_not_this_servers_fault() -> None:
    h = Harness(attempts=5, fail_max=1)
    foreign = CircuitOpenError("other breaker", operation="GET", attempts=0, may_have_been_applied=False)
    with pytest.raises(CircuitOpenError) as info:
        await h.pipeline.call("transaction", h.script(foreign), idempotent=True)
    assert info.value is foreign
    assert h.calls == 1
    assert h.breaker.state is BreakerState.CLOSED
    assert sum(v for _, v in h.points(names.BREAKER_REJECTIONS)) == 0
    other_deadline = DeadlineExceededError("x", operation="GET", attempts=1, may_have_been_applied=True)
    h.calls = 0
    with pytest.raises(DeadlineExceededError):
        await h.pipeline.call("transaction", h.script(other_deadline), idempotent=True)
    assert h.calls == 1


async def test_partly_applied_attempts_are_never_rerun_unless_idempotent() -> None:
    from trading_shared.resilience.faults import PartlyApplied

    h = Harness(attempts=5)
    with pytest.raises(OutcomeUnknownError):
        await h.pipeline.call("run", h.script(PartlyApplied(Refused()), "ok"), idempotent=False)
    assert h.calls == 1
    h.calls = 0
    with pytest.raises(OutcomeUnknownError):
        await h.pipeline.call("run", h.script(PartlyApplied(Conflict()), "ok"), idempotent=False)
    assert h.calls == 1
    h.calls = 0
    assert await h.pipeline.call("run", h.script(PartlyApplied(Refused()), "ok"), idempotent=True) == "ok"
    assert h.calls == 2


async def test_an_unwrapped_caller_error_keeps_its_root_cause() -> None:
    h = Harness()
    try:
        try:
            raise FileNotFoundError("ca.pem")
        except FileNotFoundError:
            raise Caller("tls misconfigured")  # noqa: B904 - the driver raises it this way
    except Caller as caller:
        original = caller
    with pytest.raises(Caller) as info:
        await h.pipeline.call("connect", h.script(RequestNotSent(original)), idempotent=True)
    assert isinstance(info.value.__cause__, FileNotFoundError)


async def test_an_enclosing_call_bounds_the_inner_calls_deadline_without_blaming_the_server() -> None:
    """Connect on demand, then the operation (or a replica read, then the primary): one deadline for the whole.
    Running out of what an earlier step left is not this server's failure: the breaker is not told."""
    h = Harness(attempts=100, deadline=5.0)

    async def hang() -> str:
        await asyncio.sleep(30)
        return "never"

    with enclosing_deadline(0.2):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError) as info:
            await h.pipeline.call("fetch", hang, idempotent=True)
        assert 0.19 <= time.monotonic() - started < 0.4
        # what the enclosing call left when this one began: 0.2 s less the time between the two
        assert re.search(r"deadline of 0\.(2|19\d*) s", str(info.value)), str(info.value)
        assert info.value.may_have_been_applied is True

        started = time.monotonic()  # the enclosing end has passed: nothing is sent at all
        with pytest.raises(DeadlineExceededError) as spent:
            await h.pipeline.call("INCR", h.script("applied"), idempotent=False)
        assert time.monotonic() - started < 0.05
        assert spent.value.attempts == 0 and spent.value.may_have_been_applied is False
        assert h.calls == 0
    assert CALL_DEADLINE.get() is None
    assert h.breaker.failure_count == 0


async def test_retries_stopped_by_an_enclosing_budget_do_not_count_against_the_breaker() -> None:
    h = Harness(attempts=100, deadline=5.0)
    with enclosing_deadline(0.1), pytest.raises(ServiceUnavailableError) as info:
        await h.pipeline.call("fetch", h.script(Refused()), idempotent=True)
    assert info.value.attempts > 1
    assert h.breaker.failure_count == 0
    plain = Harness(attempts=2)
    with pytest.raises(ServiceUnavailableError):  # the same failure under the server's own limits counts
        await plain.pipeline.call("fetch", plain.script(Refused()), idempotent=True)
    assert plain.breaker.failure_count == 1


async def test_an_attempt_and_the_tasks_it_starts_do_not_inherit_the_enclosing_deadline() -> None:
    h = Harness()
    seen: list[float | None] = []

    async def attempt() -> str:
        seen.append(CALL_DEADLINE.get())
        await asyncio.create_task(asyncio.sleep(0))
        task = asyncio.create_task(asyncio.sleep(0, CALL_DEADLINE.get()))
        seen.append(await task)
        return "ok"

    with enclosing_deadline(1.0):
        assert await h.pipeline.call("run", attempt, idempotent=True) == "ok"
        assert CALL_DEADLINE.get() is not None  # restored for the caller's next step
    assert seen == [None, None]


async def test_a_blocking_read_keeps_its_block_time_inside_an_enclosing_call() -> None:
    h = Harness(deadline=5.0)

    async def block() -> str:
        await asyncio.sleep(0.3)
        return "popped"

    with enclosing_deadline(0.1):
        assert await h.pipeline.call("BRPOP", block, idempotent=True, extra_time=0.5) == "popped"
        with pytest.raises(DeadlineExceededError):
            await h.pipeline.call("BRPOP", block, idempotent=True, extra_time=0.1)


async def test_an_inner_enclosing_call_never_extends_an_outer_one() -> None:
    with enclosing_deadline(0.5):
        end = CALL_DEADLINE.get()
        with enclosing_deadline(10.0):
            assert CALL_DEADLINE.get() == end
        with enclosing_deadline(0.01):
            assert (CALL_DEADLINE.get() or 0.0) < (end or 0.0)

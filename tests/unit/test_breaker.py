"""The breaker adapter's state machine, on a fake monotonic clock (pure logic: no I/O)."""

from __future__ import annotations

import pytest

from trading_shared import BreakerSettings, CircuitOpenError
from trading_shared.resilience import BreakerState
from trading_shared.resilience.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(fail_max: int = 3, reset: float = 10.0, successes: int = 1) -> tuple[CircuitBreaker, Clock, list[str]]:
    clock = Clock()
    breaker = CircuitBreaker(
        BreakerSettings(fail_max=fail_max, reset_timeout=reset, success_threshold=successes), "t", clock=clock
    )
    seen: list[str] = []
    breaker.add_observer(lambda old, new: seen.append(f"{old.value}->{new.value}"))
    return breaker, clock, seen


def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        breaker.record_failure(breaker.admit("op"))


def test_opens_after_fail_max_consecutive_failures() -> None:
    breaker, _, seen = make(fail_max=3)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    assert seen == ["closed->open"]


def test_success_resets_the_failure_count() -> None:
    breaker, _, _ = make(fail_max=3)
    fail(breaker, 2)
    breaker.record_success(breaker.admit("op"))
    assert breaker.failure_count == 0
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_open_rejects_without_calling_and_says_when_to_retry() -> None:
    breaker, clock, _ = make(fail_max=1, reset=10.0)
    fail(breaker)
    clock.now += 4
    with pytest.raises(CircuitOpenError) as info:
        breaker.admit("GET")
    assert isinstance(info.value, ConnectionError)
    assert info.value.may_have_been_applied is False
    assert info.value.retry_after == pytest.approx(6.0)


def test_half_open_admits_exactly_one_trial() -> None:
    breaker, clock, seen = make(fail_max=1, reset=10.0)
    fail(breaker)
    clock.now += 10
    trial = breaker.admit("op")
    assert breaker.state is BreakerState.HALF_OPEN
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            breaker.admit("op")
    breaker.record_success(trial)
    assert breaker.state is BreakerState.CLOSED
    assert seen == ["closed->open", "open->half_open", "half_open->closed"]


def test_failed_trial_reopens_for_a_full_reset_timeout() -> None:
    breaker, clock, _ = make(fail_max=1, reset=10.0)
    fail(breaker)
    clock.now += 10
    breaker.record_failure(breaker.admit("op"))
    assert breaker.state is BreakerState.OPEN
    clock.now += 9.9
    with pytest.raises(CircuitOpenError):
        breaker.admit("op")
    clock.now += 0.2
    breaker.admit("op")
    assert breaker.state is BreakerState.HALF_OPEN


def test_neutral_trial_outcome_frees_the_trial_slot() -> None:
    breaker, clock, _ = make(fail_max=1, reset=1.0)
    fail(breaker)
    clock.now += 1
    breaker.release(breaker.admit("op"))  # cancelled or a caller error: says nothing about the server
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(breaker.admit("op"))
    assert breaker.state is BreakerState.CLOSED


def test_success_threshold_needs_that_many_sequential_trials() -> None:
    breaker, clock, _ = make(fail_max=1, reset=1.0, successes=2)
    fail(breaker)
    clock.now += 1
    breaker.record_success(breaker.admit("op"))
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_success(breaker.admit("op"))
    assert breaker.state is BreakerState.CLOSED


def test_stale_results_from_an_earlier_state_are_ignored() -> None:
    breaker, clock, _ = make(fail_max=2, reset=1.0)
    slow_ok = breaker.admit("op")  # admitted while closed, finishes much later
    slow_bad = breaker.admit("op")
    fail(breaker, 2)
    assert breaker.state is BreakerState.OPEN
    clock.now += 1
    trial = breaker.admit("op")
    breaker.record_success(slow_ok)  # must not close the breaker: the trial decides
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure(trial)
    clock.now += 1
    trial = breaker.admit("op")
    breaker.record_success(trial)
    breaker.record_failure(slow_bad)  # stale failure must not count against the fresh closed state
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failure_count == 0


def test_a_raising_observer_never_breaks_a_call(caplog: pytest.LogCaptureFixture) -> None:
    breaker, _, _ = make(fail_max=1)

    def broken(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("observer bug")

    breaker.add_observer(broken)
    fail(breaker)
    assert breaker.state is BreakerState.OPEN
    assert "observer failed" in caplog.text


def test_no_same_state_notifications() -> None:
    breaker, _, seen = make(fail_max=3)
    for _ in range(10):
        breaker.record_success(breaker.admit("op"))
    fail(breaker)
    breaker.record_success(breaker.admit("op"))
    assert seen == []


def test_disabled_breaker_never_rejects() -> None:
    clock = Clock()
    breaker = CircuitBreaker(BreakerSettings(enabled=False, fail_max=1), "t", clock=clock)
    for _ in range(5):
        breaker.record_failure(breaker.admit("op"))
    assert breaker.state is BreakerState.CLOSED

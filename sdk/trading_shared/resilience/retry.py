"""The retry policy: tenacity's wait and stop strategies, consulted only after an attempt has failed.

tenacity's ``AsyncRetrying`` costs ~20 us on a call that succeeds first time and keeps per-call state on a shared,
thread-local object. The pipeline therefore makes the first attempt outside tenacity and asks these
stateless strategies, with a fresh ``RetryCallState`` per failure, whether and how long to wait.
"""

from __future__ import annotations

import time

import tenacity
from tenacity import stop_after_attempt, stop_before_delay, wait_exponential_jitter

from ..settings import RetrySettings

_testing_attempts: int | None = None


class TestingMode:
    """What :func:`set_testing` returns: leaving it as a context manager restores the mode in force before."""

    def __init__(self, previous: int | None) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        global _testing_attempts
        _testing_attempts = self._previous


def set_testing(enabled: bool, *, attempts: int = 1) -> TestingMode:
    """Test mode for applications' own test suites: no backoff waits and at most ``attempts`` attempts per call.

    Applies at once, process-wide (meant for tests only). Either call ``set_testing(False)`` later, or use it as a
    context manager, ``with set_testing(True):``, which restores the mode in force before on leaving.
    """
    global _testing_attempts
    if enabled and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise ValueError("attempts must be an int >= 1")
    previous = _testing_attempts
    _testing_attempts = attempts if enabled else None
    return TestingMode(previous)


def testing_enabled() -> bool:
    """Whether :func:`set_testing` is in force."""
    return _testing_attempts is not None


class RetryPolicy:
    """Decides, after a failed attempt, whether to retry and after how long. Stateless: shared per client safely."""

    def __init__(self, settings: RetrySettings) -> None:
        self.settings = settings
        self._wait = wait_exponential_jitter(
            multiplier=settings.initial_backoff, max=settings.max_backoff, jitter=settings.jitter
        )
        self._stop = stop_after_attempt(settings.max_attempts) | stop_before_delay(settings.deadline)

    def next_delay(self, attempt: int, started: float, extra_time: float = 0.0) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or ``None`` to stop.

        ``started`` is the call's ``time.monotonic()`` start; ``extra_time`` widens the deadline for calls that
        block on purpose (BRPOP, XREADGROUP BLOCK), or narrows it (negative) for a call inside an enclosing one.
        """
        if _testing_attempts is not None:
            return 0.0 if attempt < min(_testing_attempts, self.settings.max_attempts) else None
        state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.start_time = started + extra_time
        state.attempt_number = attempt
        state.outcome_timestamp = time.monotonic()
        state.upcoming_sleep = delay = self._wait(state)
        if self._stop(state):
            return None
        return delay

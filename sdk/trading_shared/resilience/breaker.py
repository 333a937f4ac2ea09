"""An asyncio-correct circuit breaker over pybreaker.

pybreaker keeps the state, the counters and the listener bus; this adapter decides *when* to consult it, because
pybreaker alone misbehaves under asyncio: it counts a coroutine as a success before it runs, lets every
caller through when half-open, lets stale results from calls started in an earlier state close or reopen it,
counts cancellation as a failure, times its reset with the wall clock and lets a raising listener break a call.

Here:

* :meth:`CircuitBreaker.admit` runs before each attempt with no ``await`` in it. Closed: it hands out a ticket (the
  current generation). Open: it rejects with :class:`~trading_shared.errors.CircuitOpenError` until
  ``reset_timeout`` has passed on the monotonic clock, then admits exactly one trial call (half-open).
* The attempt's outcome is recorded synchronously afterwards, through ``pybreaker``'s ``calling()`` with no await
  inside, and only if the ticket's generation is still current: a result from a call admitted in an earlier state
  is stale and ignored.
* Only infrastructure failures are recorded as failures. Caller errors and cancellation are neutral
  (:meth:`release`). A closed breaker with no failures costs a couple of attribute reads per call.
* Observers are notified of real transitions only, and an observer that raises is logged and ignored.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import pybreaker

from ..errors import CircuitOpenError
from ..settings import BreakerSettings

_log = logging.getLogger(__name__)

#: Ticket for calls admitted while the breaker is disabled; never recorded.
_DISABLED = -1


class BreakerState(enum.Enum):
    """The breaker's state, independent of pybreaker's spelling."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


_FROM_PYBREAKER = {
    pybreaker.STATE_CLOSED: BreakerState.CLOSED,
    pybreaker.STATE_OPEN: BreakerState.OPEN,
    pybreaker.STATE_HALF_OPEN: BreakerState.HALF_OPEN,
}

#: Called as ``observer(old_state, new_state)`` after every real transition.
TransitionObserver = Callable[[BreakerState, BreakerState], None]


class _Failure(Exception):
    """Raised inside ``pybreaker.calling()`` to record one failure."""


class CircuitBreaker:
    """One breaker guarding one server endpoint. Not shared between clients; never class-level state."""

    def __init__(
        self,
        settings: BreakerSettings,
        name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._settings = settings
        self._enabled = settings.enabled
        self._clock = clock
        self._generation = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        self._observers: list[TransitionObserver] = []
        self._cb = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            # The adapter times the reset on the monotonic clock and moves to half-open itself.
            reset_timeout=settings.reset_timeout,
            success_threshold=settings.success_threshold,
            throw_new_error_on_trip=False,
            listeners=[_Listener(self)],
            name=name,
        )

    # -- queries ---------------------------------------------------------------------------------------------------
    @property
    def state(self) -> BreakerState:
        """The current state."""
        return _FROM_PYBREAKER[self._cb.current_state]

    @property
    def failure_count(self) -> int:
        """Consecutive infrastructure failures counted while closed."""
        return self._cb.fail_counter

    def is_open(self) -> bool:
        """Whether calls are being rejected now (open and the reset timeout has not yet passed)."""
        return self._cb.current_state == pybreaker.STATE_OPEN and self.retry_after() > 0

    def is_trial(self, ticket: int) -> bool:
        """Whether ``ticket`` belongs to the half-open trial call."""
        return ticket == self._generation and self._cb.current_state == pybreaker.STATE_HALF_OPEN

    def retry_after(self) -> float:
        """Seconds until an open breaker admits a trial call (0 when it would admit one now)."""
        if self._cb.current_state != pybreaker.STATE_OPEN:
            return 0.0
        return max(0.0, self._opened_at + self._settings.reset_timeout - self._clock())

    def add_observer(self, observer: TransitionObserver) -> None:
        """Call ``observer(old, new)`` after each transition. Its exceptions are logged, never raised."""
        self._observers.append(observer)

    # -- the call protocol -------------------------------------------------------------------------------------------
    def admit(self, operation: str) -> int:
        """Let one attempt through or raise :class:`CircuitOpenError`. Returns the ticket to record with."""
        if not self._enabled:
            return _DISABLED
        state = self._cb.current_state
        if state == pybreaker.STATE_CLOSED:
            return self._generation
        if self._trial_in_flight or (
            state == pybreaker.STATE_OPEN and self._clock() - self._opened_at < self._settings.reset_timeout
        ):
            raise self._rejection(operation)
        if state == pybreaker.STATE_OPEN:
            self._cb.half_open()  # the listener bumps the generation
        self._trial_in_flight = True
        return self._generation

    def record_success(self, ticket: int) -> None:
        """Record a successful attempt admitted with ``ticket``."""
        if ticket != self._generation:
            return  # disabled, or admitted in an earlier state: stale
        cb = self._cb
        if cb.current_state == pybreaker.STATE_CLOSED and cb.fail_counter == 0:
            return
        with cb.calling():
            pass
        self._trial_in_flight = False

    def record_failure(self, ticket: int) -> None:
        """Record an infrastructure failure of an attempt admitted with ``ticket``."""
        if ticket != self._generation:
            return
        try:
            with self._cb.calling():
                raise _Failure
        except (_Failure, pybreaker.CircuitBreakerError):
            pass
        self._trial_in_flight = False

    def release(self, ticket: int) -> None:
        """End an attempt whose outcome says nothing about the server (caller error, cancellation)."""
        if ticket == self._generation and self._cb.current_state == pybreaker.STATE_HALF_OPEN:
            self._trial_in_flight = False

    def reset(self) -> None:
        """Force the breaker closed (operators and tests)."""
        self._cb.close()
        self._trial_in_flight = False

    # -- internals -----------------------------------------------------------------------------------------------------
    def _rejection(self, operation: str) -> CircuitOpenError:
        err = CircuitOpenError(
            f"circuit breaker {self.name!r} is open: {operation} was not sent",
            operation=operation,
            attempts=0,
            may_have_been_applied=False,
        )
        err.retry_after = self.retry_after()
        return err

    def _on_transition(self, old: BreakerState, new: BreakerState) -> None:
        self._generation += 1
        self._trial_in_flight = False
        if new is BreakerState.OPEN:
            self._opened_at = self._clock()
        _log.warning("circuit breaker %s: %s -> %s", self.name, old.value, new.value)
        for observer in self._observers:
            try:
                observer(old, new)
            except Exception:
                _log.exception("circuit breaker observer failed; ignored")


class _Listener(pybreaker.CircuitBreakerListener):
    """Turns pybreaker's notifications into real transitions only (it also reports closed -> closed)."""

    def __init__(self, owner: CircuitBreaker) -> None:
        self._owner = owner

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        old = _FROM_PYBREAKER[old_state.name] if old_state is not None else BreakerState.CLOSED
        new = _FROM_PYBREAKER[new_state.name]
        if old is not new:
            self._owner._on_transition(old, new)

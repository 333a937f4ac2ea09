"""The one call pipeline both clients use: breaker gate -> attempt -> classify -> retry -> telemetry.

A client describes an operation (its name, whether it may be re-sent after its request may have reached the
server, and one attempt as a zero-argument coroutine function) and hands it to :meth:`Pipeline.call`. Rules:

* Caller errors are raised unchanged at once: no retry, breaker untouched.
* Infrastructure failures are retried with exponential backoff and jitter, within ``max_attempts`` and the total
  ``deadline``; an INDETERMINATE one only when the operation is idempotent. The breaker counts failed CALLS, not
  failed attempts: a blip that a retry absorbs (a fast server restart) never opens it, while a server that stays
  down opens it after ``fail_max`` calls have run out of retries. A failed half-open trial reopens it at once.
* Conflicts (serialization failure, deadlock) re-run the whole operation; the breaker is untouched. A conflict
  that outlasts the policy is raised as the driver's error, unless an earlier attempt may have been applied: then
  it is a :class:`~trading_shared.errors.ServiceUnavailableError` with ``may_have_been_applied=True``.
* Cancellation is neutral for the breaker and recorded on the span. A call past its deadline is cancelled by the
  client's watchdog and raises :class:`~trading_shared.errors.DeadlineExceededError`.
* What remains after the policy gives up is a :class:`~trading_shared.errors.ServiceUnavailableError` (a builtin
  ``ConnectionError``) chained from the last driver error.

The first attempt runs outside tenacity; the policy is consulted only after a failure (see ``retry.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

from opentelemetry.trace import Span

from ..errors import (
    CircuitOpenError,
    DeadlineExceededError,
    OutcomeUnknownError,
    PoolExhaustedError,
    ServiceUnavailableError,
    TradingSharedError,
)
from ..settings import RetrySettings
from ..telemetry import names
from ..telemetry.client import ClientTelemetry
from .breaker import CircuitBreaker
from .deadline import CALL_DEADLINE, DeadlineWatchdog
from .faults import Fault, PartlyApplied, RequestNotSent
from .retry import RetryPolicy

T = TypeVar("T")


class DriverErrors(Protocol):
    """How a driver's exceptions are read: by type and error code, never by message."""

    def classify(self, exc: BaseException) -> Fault:
        """The meaning of ``exc`` for retries and the breaker."""

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        """``(error.type, db.response.status_code)`` for telemetry: low-cardinality, no values."""


class Pipeline:
    """Runs operations for one client against one server endpoint.

    ``backoff(delay)`` waits between attempts: ``asyncio.sleep``, or for sentinel and cluster endpoints a wait that a
    topology change cuts short, so a retry waiting out a failover goes to the new server as soon as it is known.
    """

    def __init__(
        self,
        *,
        retry: RetrySettings,
        breaker: CircuitBreaker,
        errors: DriverErrors,
        telemetry: ClientTelemetry,
        activate_span: bool = False,
        backoff: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.breaker = breaker
        self._backoff = backoff
        self._activate_span = activate_span
        self.telemetry = telemetry
        self.policy = RetryPolicy(retry)
        self._deadline = retry.deadline
        self._errors = errors
        self._watchdog = DeadlineWatchdog(tick=min(0.05, retry.deadline / 10))
        breaker.add_observer(lambda _old, new: telemetry.breaker_transition(new.value))

    def close(self) -> None:
        """Stop the deadline watchdog."""
        self._watchdog.close()

    async def call(
        self,
        operation: str,
        attempt: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        extra_time: float = 0.0,
    ) -> T:
        """Run ``attempt`` under the pipeline's rules and return its result.

        ``idempotent`` says the request may be re-sent after it may have reached the server (keys, explicit ids,
        ON CONFLICT). ``extra_time`` widens the deadline for operations that block on purpose.
        """
        tel = self.telemetry
        span = tel.start(operation)
        t0 = time.perf_counter()
        started = time.monotonic()
        own_end = end = started + self._deadline + extra_time
        enclosing = CALL_DEADLINE.get()
        cleared = None
        if enclosing is not None:
            # What an earlier step of the caller's call (a connect on demand, a replica read) left. Running out of
            # it says nothing about this server, so it never counts against the breaker.
            end = min(own_end, enclosing + extra_time)
            if end <= started:
                self._spent(span, operation, t0)
            cleared = CALL_DEADLINE.set(None)  # the attempt (a caller's fn, tasks it starts) starts afresh
        token = self._watchdog.register(end)
        attempts = 0
        ticket = -1
        owed: int | None = None  # ticket of an infrastructure failure the breaker has not been told of yet
        in_attempt = False
        maybe_applied = False
        last: BaseException | None = None
        rejection: CircuitOpenError | None = None  # raised by THIS breaker (not one met inside the attempt)
        try:
            while True:
                attempts += 1
                try:
                    ticket = self.breaker.admit(operation)
                except CircuitOpenError as rejected:
                    rejection = rejected
                    raise
                in_attempt = True
                try:
                    if self._activate_span:
                        with tel.activate(span):
                            result = await attempt()
                    else:
                        result = await attempt()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    in_attempt = False
                    original, fault = self._classify(exc)
                    if fault is Fault.CALLER:
                        self.breaker.release(ticket)
                        owed = None  # the server answered
                        if original is exc:
                            raise
                        # unwrapped from a marker: keep its own root cause (raising here would replace its context)
                        raise original from original.__cause__ or original.__context__
                    if not fault.infrastructure:
                        self.breaker.release(ticket)
                    elif self.breaker.is_trial(ticket):
                        self.breaker.record_failure(ticket)  # a failed trial reopens at once
                        owed = None
                    else:
                        owed = ticket
                    maybe_applied = maybe_applied or fault is Fault.INDETERMINATE
                    last = original
                    error_type = self._errors.describe(original)[0]
                    if fault is Fault.POOL_EXHAUSTED:
                        tel.attempt_failed(span, operation, attempt=attempts, error_type=error_type,
                                           fault=fault.value, delay=None)  # fmt: skip
                        raise PoolExhaustedError(
                            f"{operation}: no pooled connection available ({error_type})",
                            operation=operation,
                            attempts=attempts,
                            may_have_been_applied=maybe_applied,
                        ) from original
                    if fault is Fault.INDETERMINATE and not idempotent:
                        tel.attempt_failed(span, operation, attempt=attempts, error_type=error_type,
                                           fault=fault.value, delay=None)  # fmt: skip
                        raise OutcomeUnknownError(
                            f"{operation} failed after its request may have reached the server ({error_type}); "
                            "not re-sent because it is not idempotent: it may or may not have been applied",
                            operation=operation,
                            attempts=attempts,
                            may_have_been_applied=True,
                        ) from original
                    delay = self.policy.next_delay(attempts, started, end - started - self._deadline)
                    stopped_by_budget = delay is None and end < own_end
                    if stopped_by_budget and self.policy.next_delay(attempts, started, extra_time) is not None:
                        self._neutral(owed)  # the enclosing budget stopped the retries, not this server
                        owed = None
                    tel.attempt_failed(span, operation, attempt=attempts, error_type=error_type,
                                       fault=fault.value, delay=delay)  # fmt: skip
                    if delay is None:
                        if fault is Fault.CONFLICT and not maybe_applied:
                            raise original from original.__cause__
                        # A conflict after an earlier attempt may have been applied (an idempotent write whose
                        # COMMIT reply was lost) must not read as "rolled back": say the outcome is unknown.
                        raise ServiceUnavailableError(
                            f"{operation} failed after {attempts} attempt(s): {error_type}",
                            operation=operation,
                            attempts=attempts,
                            may_have_been_applied=maybe_applied,
                        ) from original
                    if delay > 0 and not self.breaker.is_open():
                        await self._backoff(delay)
                else:
                    self.breaker.record_success(ticket)
                    tel.end(span, operation, time.perf_counter() - t0, attempts=attempts)
                    return result
        except CircuitOpenError as rejected:
            if rejected is not rejection:  # another client's breaker, met inside the attempt: a caller error here
                self._end_other(span, operation, t0, rejected, attempts, owed)
                raise
            self._settle(owed)
            tel.breaker_rejected(operation)
            rejected.attempts = attempts - 1
            rejected.may_have_been_applied = maybe_applied
            self._end_failed(span, operation, t0, rejected, names.ERROR_CIRCUIT_OPEN, None, attempts - 1)
            if last is not None:
                raise rejected from last
            raise
        except asyncio.CancelledError as cancelled:
            if not self._watchdog.absorb_cancel(token):
                if in_attempt:
                    self.breaker.release(ticket)  # cancellation says nothing about the server
                tel.cancelled(span)
                self._end_failed(span, operation, t0, cancelled, names.ERROR_CANCELLED, None, attempts)
                raise
            if in_attempt:
                owed = ticket  # hung past the deadline: an infrastructure failure
                maybe_applied = True  # cut off mid-attempt: the request may have reached the server
            if time.monotonic() < own_end:  # cut by what an earlier step left, not by this server's deadline
                self._neutral(owed)
                owed = None
            self._settle(owed)
            expired = DeadlineExceededError(
                f"{operation} did not complete within its deadline of {end - started:.3g} s ({attempts} attempt(s))",
                operation=operation,
                attempts=attempts,
                may_have_been_applied=maybe_applied,
            )
            self._end_failed(span, operation, t0, expired, names.ERROR_DEADLINE, None, attempts)
            raise expired from last
        except BaseException as exc:
            if in_attempt:  # SystemExit, KeyboardInterrupt, GeneratorExit: never leave a trial slot taken
                self.breaker.release(ticket)
            self._end_other(span, operation, t0, exc, attempts, owed)
            raise
        finally:
            self._watchdog.unregister(token)
            if cleared is not None:
                CALL_DEADLINE.reset(cleared)

    def _neutral(self, owed: int | None) -> None:
        """Forget a failure the breaker was owed: free its ticket (a trial slot) without counting it."""
        if owed is not None:
            self.breaker.release(owed)

    def _spent(self, span: Span | None, operation: str, t0: float) -> NoReturn:
        """The enclosing call's deadline had passed before this call began: nothing is sent."""
        expired = DeadlineExceededError(
            f"{operation} not sent: the call's deadline had already passed", operation=operation, attempts=0,
            may_have_been_applied=False,
        )  # fmt: skip
        self._end_failed(span, operation, t0, expired, names.ERROR_DEADLINE, None, 0)
        raise expired

    def _settle(self, owed: int | None) -> None:
        """Tell the breaker that a call failed for good. Blips absorbed by a retry never count against it."""
        if owed is not None:
            self.breaker.record_failure(owed)

    def _end_other(
        self, span: Span | None, operation: str, t0: float, exc: BaseException, attempts: int, owed: int | None
    ) -> None:
        self._settle(owed)
        described = exc.__cause__ if isinstance(exc, ServiceUnavailableError) and exc.__cause__ else exc
        error_type, status = self._errors.describe(described)
        self._end_failed(span, operation, t0, exc, error_type, status, attempts)

    def _classify(self, exc: BaseException) -> tuple[BaseException, Fault]:
        if isinstance(exc, RequestNotSent):
            fault = self._errors.classify(exc.original)
            return exc.original, Fault.UNAVAILABLE if fault is Fault.INDETERMINATE else fault
        if isinstance(exc, PartlyApplied):
            fault = self._errors.classify(exc.original)
            if fault is Fault.UNAVAILABLE or fault is Fault.CONFLICT:
                fault = Fault.INDETERMINATE  # an earlier request of the same attempt may have been applied
            return exc.original, fault
        if isinstance(exc, TradingSharedError):
            # Raised by another client (or this one, nested) inside the attempt: it says nothing about this server.
            return exc, Fault.CALLER
        return exc, self._errors.classify(exc)

    def _end_failed(
        self,
        span: Span | None,
        operation: str,
        t0: float,
        error: BaseException,
        error_type: str,
        status: str | None,
        attempts: int,
    ) -> None:
        self.telemetry.end(
            span,
            operation,
            time.perf_counter() - t0,
            error=error,
            error_type=error_type,
            status_code=status,
            attempts=attempts,
        )

"""The one call pipeline both clients use: breaker gate -> attempt -> classify -> retry -> telemetry.

A client describes an operation (its name, whether it may be re-sent after its request may have reached the
server, and one attempt as a zero-argument coroutine function) and hands it to :meth:`CallPipeline.call`. Rules:

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

#: Told of every failed attempt once the pipeline has classified it: ``(error, fault)``, where ``error`` is the
#: driver's error (unwrapped from the internal markers). It may return another error to report in its place, which
#: keeps the same fault (the Redis router names a master that changed mid-call this way). It runs as part of the
#: attempt: inside the call's deadline and, for pipelines that activate it, with the call's span current.
FailureHook = Callable[[BaseException, Fault], Awaitable[BaseException | None]]


class DriverErrors(Protocol):
    """How a driver's exceptions are read: by type and error code, never by message."""

    def classify(self, exc: BaseException) -> Fault:
        """The meaning of ``exc`` for retries and the breaker."""

    def describe(self, exc: BaseException) -> tuple[str, str | None]:
        """``(error.type, db.response.status_code)`` for telemetry: low-cardinality, no values."""


class CallPipeline:
    """Runs operations for one client against one server endpoint (the resilience pipeline: not a Redis pipeline,
    which batches commands in one round trip).

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
        on_failure: FailureHook | None = None,
    ) -> T:
        """Run ``attempt`` under the pipeline's rules and return its result.

        ``idempotent`` says the request may be re-sent after it may have reached the server (keys, explicit ids,
        ON CONFLICT). ``extra_time`` widens the deadline for operations that block on purpose. ``on_failure`` learns
        of each failed attempt with the pipeline's classification (see :data:`FailureHook`).
        """
        call = _Call(operation, self.telemetry.start(operation), self._deadline, extra_time)
        enclosing = CALL_DEADLINE.get()
        cleared = None
        if enclosing is not None:
            # What an earlier step of the caller's call (a connect on demand, a replica read) left. Running out of
            # it says nothing about this server, so it never counts against the breaker.
            call.end = min(call.own_end, enclosing + extra_time)
            if call.end <= call.started:
                self._spent(call)
            cleared = CALL_DEADLINE.set(None)  # the attempt (a caller's fn, tasks it starts) starts afresh
        token = self._watchdog.register(call.end)
        try:
            while True:
                call.attempts += 1
                try:
                    call.ticket = self.breaker.admit(operation)
                except CircuitOpenError as rejected:
                    call.rejection = rejected
                    raise
                call.in_attempt = True
                try:
                    if self._activate_span:
                        with self.telemetry.activate(call.span):
                            result = await attempt()
                    else:
                        result = await attempt()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    original, fault = self._classify(exc)
                    if on_failure is not None:
                        original = await self._report(call, on_failure, original, fault)
                    call.in_attempt = False
                    delay = self._after_failure(call, exc, original, fault, idempotent)  # raises when the call ends
                    if delay > 0 and not self.breaker.is_open():
                        await self._backoff(delay)
                else:
                    self.breaker.record_success(call.ticket)
                    self.telemetry.end(call.span, operation, time.perf_counter() - call.t0, attempts=call.attempts)
                    return result
        except CircuitOpenError as rejected:
            if rejected is not call.rejection:  # another client's breaker, met inside the attempt: a caller error
                self._end_unexpected(call, rejected)
                raise
            self._rejected(call, rejected)
            if call.last is not None:
                raise rejected from call.last
            raise
        except asyncio.CancelledError as cancelled:
            if not self._watchdog.absorb_cancel(token):
                self._cancelled(call, cancelled)
                raise
            raise self._expired(call) from call.last
        except BaseException as exc:
            if call.in_attempt:  # SystemExit, KeyboardInterrupt, GeneratorExit: never leave a trial slot taken
                self.breaker.release(call.ticket)
            self._end_unexpected(call, exc)
            raise
        finally:
            self._watchdog.unregister(token)
            if cleared is not None:
                CALL_DEADLINE.reset(cleared)

    # -- the ways a call goes on or ends ---------------------------------------------------------------------------
    async def _report(
        self, call: _Call, on_failure: FailureHook, original: BaseException, fault: Fault
    ) -> BaseException:
        """Tell ``on_failure`` of a failed attempt; the error to report from here on."""
        if self._activate_span:
            with self.telemetry.activate(call.span):
                replacement = await on_failure(original, fault)
        else:
            replacement = await on_failure(original, fault)
        return original if replacement is None else replacement

    def _after_failure(
        self, call: _Call, exc: Exception, original: BaseException, fault: Fault, idempotent: bool
    ) -> float:
        """A failed attempt (``exc`` as raised, ``original`` and ``fault`` as classified): tell the breaker what it
        needs to know and return the wait before the next attempt, or raise what the call ends with (the caller's
        error, OutcomeUnknownError, PoolExhaustedError, or ServiceUnavailableError once the policy gives up)."""
        operation, tel = call.operation, self.telemetry
        if fault is Fault.CALLER:
            self.breaker.release(call.ticket)
            call.owed = None  # the server answered
            if original is exc:
                raise exc
            # unwrapped from a marker: keep its own root cause (raising here would replace its context)
            raise original from original.__cause__ or original.__context__
        if not fault.infrastructure:
            self.breaker.release(call.ticket)
        elif self.breaker.is_trial(call.ticket):
            self.breaker.record_failure(call.ticket)  # a failed trial reopens at once
            call.owed = None
        else:
            call.owed = call.ticket
        call.maybe_applied = call.maybe_applied or fault is Fault.INDETERMINATE
        call.last = original
        error_type = self._errors.describe(original)[0]
        if fault is Fault.POOL_EXHAUSTED or (fault is Fault.INDETERMINATE and not idempotent):
            tel.attempt_failed(call.span, operation, attempt=call.attempts, error_type=error_type,
                               fault=fault.value, delay=None)  # fmt: skip
            if fault is Fault.POOL_EXHAUSTED:
                raise PoolExhaustedError(
                    f"{operation}: no pooled connection available ({error_type})",
                    operation=operation,
                    attempts=call.attempts,
                    may_have_been_applied=call.maybe_applied,
                ) from original
            raise OutcomeUnknownError(
                f"{operation} failed after its request may have reached the server ({error_type}); "
                "not re-sent because it is not idempotent: it may or may not have been applied",
                operation=operation,
                attempts=call.attempts,
                may_have_been_applied=True,
            ) from original
        extra = call.end - call.started - self._deadline
        delay = self.policy.next_delay(call.attempts, call.started, extra)
        stopped_by_budget = delay is None and call.end < call.own_end
        if stopped_by_budget and self.policy.next_delay(call.attempts, call.started, call.extra_time) is not None:
            self._forgive_owed(call)  # the enclosing budget stopped the retries, not this server
        tel.attempt_failed(call.span, operation, attempt=call.attempts, error_type=error_type,
                           fault=fault.value, delay=delay)  # fmt: skip
        if delay is not None:
            return delay
        if fault is Fault.CONFLICT and not call.maybe_applied:
            raise original from original.__cause__
        # A conflict after an earlier attempt may have been applied (an idempotent write whose COMMIT reply was
        # lost) must not read as "rolled back": say the outcome is unknown.
        raise ServiceUnavailableError(
            f"{operation} failed after {call.attempts} attempt(s): {error_type}",
            operation=operation,
            attempts=call.attempts,
            may_have_been_applied=call.maybe_applied,
        ) from original

    def _rejected(self, call: _Call, rejected: CircuitOpenError) -> None:
        """This breaker refused an attempt: the call ends with ``rejected`` (after the attempts made before)."""
        self._count_owed_failure(call)
        self.telemetry.breaker_rejected(call.operation)
        rejected.attempts = call.attempts - 1
        rejected.may_have_been_applied = call.maybe_applied
        self._end_failed(call, rejected, names.ERROR_CIRCUIT_OPEN, None, call.attempts - 1)

    def _cancelled(self, call: _Call, cancelled: asyncio.CancelledError) -> None:
        """Cancelled by the caller (not by the deadline): neutral for the breaker, recorded on the span."""
        if call.in_attempt:
            self.breaker.release(call.ticket)
        self.telemetry.cancelled(call.span)
        self._end_failed(call, cancelled, names.ERROR_CANCELLED, None, call.attempts)

    def _expired(self, call: _Call) -> DeadlineExceededError:
        """The watchdog cut the call at its deadline: the error to raise."""
        if call.in_attempt:
            call.owed = call.ticket  # hung past the deadline: an infrastructure failure
            call.maybe_applied = True  # cut off mid-attempt: the request may have reached the server
        if time.monotonic() < call.own_end:  # cut by what an earlier step left, not by this server's deadline
            self._forgive_owed(call)
        self._count_owed_failure(call)
        expired = DeadlineExceededError(
            f"{call.operation} did not complete within its deadline of {call.end - call.started:.3g} s "
            f"({call.attempts} attempt(s))",
            operation=call.operation,
            attempts=call.attempts,
            may_have_been_applied=call.maybe_applied,
        )
        self._end_failed(call, expired, names.ERROR_DEADLINE, None, call.attempts)
        return expired

    def _spent(self, call: _Call) -> NoReturn:
        """The enclosing call's deadline had passed before this call began: nothing is sent."""
        expired = DeadlineExceededError(
            f"{call.operation} not sent: the call's deadline had already passed", operation=call.operation,
            attempts=0, may_have_been_applied=False,
        )  # fmt: skip
        self._end_failed(call, expired, names.ERROR_DEADLINE, None, 0)
        raise expired

    def _forgive_owed(self, call: _Call) -> None:
        """Forget a failure the breaker was owed: free its ticket (a trial slot) without counting it."""
        if call.owed is not None:
            self.breaker.release(call.owed)
            call.owed = None

    def _count_owed_failure(self, call: _Call) -> None:
        """Tell the breaker that the call failed for good. Blips absorbed by a retry never count against it."""
        if call.owed is not None:
            self.breaker.record_failure(call.owed)

    def _end_unexpected(self, call: _Call, exc: BaseException) -> None:
        """End the span and metrics for an error the pipeline does not handle itself (raised as it is)."""
        self._count_owed_failure(call)
        described = exc.__cause__ if isinstance(exc, ServiceUnavailableError) and exc.__cause__ else exc
        error_type, status = self._errors.describe(described)
        self._end_failed(call, exc, error_type, status, call.attempts)

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
        self, call: _Call, error: BaseException, error_type: str, status: str | None, attempts: int
    ) -> None:
        self.telemetry.end(
            call.span,
            call.operation,
            time.perf_counter() - call.t0,
            error=error,
            error_type=error_type,
            status_code=status,
            attempts=attempts,
        )


class _Call:
    """The state of one :meth:`CallPipeline.call`: its deadline, attempts, breaker ticket and what failed so far."""

    __slots__ = (
        "attempts",
        "end",
        "extra_time",
        "in_attempt",
        "last",
        "maybe_applied",
        "operation",
        "owed",
        "own_end",
        "rejection",
        "span",
        "started",
        "t0",
        "ticket",
    )  # fmt: skip

    def __init__(self, operation: str, span: Span | None, deadline: float, extra_time: float) -> None:
        self.operation = operation
        self.span = span
        self.t0 = time.perf_counter()
        self.started = time.monotonic()
        self.extra_time = extra_time
        #: This pipeline's own end for the call, and the end in force (earlier when an enclosing call left less).
        self.own_end = self.end = self.started + deadline + extra_time
        self.attempts = 0
        self.ticket = -1
        #: Ticket of an infrastructure failure the breaker has not been told of yet.
        self.owed: int | None = None
        self.in_attempt = False
        self.maybe_applied = False
        self.last: BaseException | None = None
        #: The CircuitOpenError THIS breaker raised (not one met inside the attempt).
        self.rejection: CircuitOpenError | None = None

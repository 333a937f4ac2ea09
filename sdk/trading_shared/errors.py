"""The SDK's errors, in one tree.

::

    Exception
    ├── TradingSharedError
    │   ├── ConfigurationError (also ValueError)       bad settings, DSN or URL; raised before any I/O
    │   └── ServiceUnavailableError (also ConnectionError)
    │       │    transient infrastructure failures outlasted the retry policy; ``__cause__`` is the last driver error
    │       ├── CircuitOpenError                        the breaker is open: failed fast, nothing was sent
    │       ├── OutcomeUnknownError                     a write that must not be re-sent failed after it may have
    │       │                                           reached the server: it may or may not have been applied
    │       ├── DeadlineExceededError (also TimeoutError) the call's total deadline ran out
    │       ├── PoolExhaustedError                      no connection could be had from the client's own pool
    │       └── BulkWriteError                          part of a bulk write was not written; says exactly which
    └── driver errors, unchanged                        caller errors (syntax, constraint, WRONGTYPE, auth) are raised
                                                        as the driver's own exception: never retried, breaker untouched

Every :class:`ServiceUnavailableError` is a builtin :class:`ConnectionError`, so services that caught
``ConnectionError`` from the replaced clients keep working. Each says whether the failed request may have been
applied (:attr:`ServiceUnavailableError.may_have_been_applied`): ``False`` means it certainly was not (safe to
send again), ``True`` means the outcome is unknown and the caller must reconcile before re-sending.
"""

from __future__ import annotations

from collections.abc import Sequence


class TradingSharedError(Exception):
    """Base of every error the SDK raises itself."""


class ConfigurationError(TradingSharedError, ValueError):
    """Settings, a DSN or a URL are invalid. Raised before any I/O; never retried."""


class ServiceUnavailableError(TradingSharedError, ConnectionError):
    """The server could not be reached or did not answer in time, after the retry policy ran its course.

    Attributes:
        operation: the failed call's name in telemetry: the Redis command, or the PostgreSQL statement's
            ``db.query.summary`` (``SELECT instruments``, or the caller's ``summary=``).
        attempts: how many times the request was tried.
        may_have_been_applied: ``False`` when no attempt can have reached the server, ``True`` when one may have.
    """

    def __init__(self, message: str, *, operation: str, attempts: int, may_have_been_applied: bool) -> None:
        super().__init__(message)
        self.operation = operation
        self.attempts = attempts
        self.may_have_been_applied = may_have_been_applied

    def __reduce__(self) -> tuple[object, ...]:  # keeps the error picklable across processes
        return (
            _rebuild,
            (type(self), str(self), self.operation, self.attempts, self.may_have_been_applied),
        )


def _rebuild(
    cls: type[ServiceUnavailableError], message: str, operation: str, attempts: int, applied: bool
) -> ServiceUnavailableError:
    err = cls.__new__(cls)
    ServiceUnavailableError.__init__(
        err, message, operation=operation, attempts=attempts, may_have_been_applied=applied
    )
    return err


class CircuitOpenError(ServiceUnavailableError):
    """The client's circuit breaker is open: the call failed in microseconds without I/O.

    Attributes:
        retry_after: seconds until the breaker lets a trial call through.
    """

    retry_after: float = 0.0


class OutcomeUnknownError(ServiceUnavailableError):
    """A non-idempotent write failed after its request may have reached the server, so it was not re-sent.

    The write may or may not have been applied; ``may_have_been_applied`` is always ``True``.
    """


class DeadlineExceededError(ServiceUnavailableError, TimeoutError):
    """The call's total deadline (``retry.deadline``) ran out. Also a builtin :class:`TimeoutError`."""


class PoolExhaustedError(ServiceUnavailableError):
    """No connection could be taken from the client's own pool in time. Nothing was sent; not retried."""


class BulkWriteError(ServiceUnavailableError):
    """A bulk write was only partly written.

    Attributes:
        not_written: indexes (into the caller's input) of the items that were certainly not written.
        outcome_unknown: indexes of items that may or may not have been written.
        dead_lettered: indexes of the items copied to the dead-letter destination (a subset of the above).
    """

    def __init__(
        self,
        message: str,
        *,
        operation: str,
        attempts: int,
        not_written: Sequence[int],
        outcome_unknown: Sequence[int] = (),
        dead_lettered: Sequence[int] = (),
    ) -> None:
        super().__init__(
            message,
            operation=operation,
            attempts=attempts,
            may_have_been_applied=bool(outcome_unknown),
        )
        self.not_written = tuple(not_written)
        self.outcome_unknown = tuple(outcome_unknown)
        self.dead_lettered = tuple(dead_lettered)

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_bulk,
            (str(self), self.operation, self.attempts, self.not_written, self.outcome_unknown, self.dead_lettered),
        )


def _rebuild_bulk(
    message: str,
    operation: str,
    attempts: int,
    not_written: tuple[int, ...],
    unknown: tuple[int, ...],
    dead: tuple[int, ...],
) -> BulkWriteError:
    return BulkWriteError(
        message,
        operation=operation,
        attempts=attempts,
        not_written=not_written,
        outcome_unknown=unknown,
        dead_lettered=dead,
    )


__all__ = [
    "BulkWriteError",
    "CircuitOpenError",
    "ConfigurationError",
    "DeadlineExceededError",
    "OutcomeUnknownError",
    "PoolExhaustedError",
    "ServiceUnavailableError",
    "TradingSharedError",
]

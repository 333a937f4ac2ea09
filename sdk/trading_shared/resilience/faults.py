"""What a failed attempt means for retrying and for the circuit breaker.

Each driver has a classifier (``postgres/classify.py``, ``redis/classify.py``) that maps an exception to a
:class:`Fault` by its TYPE and error code only, never by message text.
"""

from __future__ import annotations

import enum
import errno

#: Socket errnos that mean the network or the server failed (not the caller): read by both drivers' classifiers.
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ENETDOWN,
    }
)


class Fault(enum.Enum):
    """The meaning of one failed attempt."""

    #: The caller's mistake (syntax, constraint, wrong type, auth, bad input): raised as is, never retried,
    #: the breaker is untouched.
    CALLER = "caller"
    #: The server was not reached; the request was certainly not applied. Retried; counts against the breaker.
    UNAVAILABLE = "unavailable"
    #: The connection failed after the request may have reached the server. Retried only for operations that
    #: are idempotent by construction; counts against the breaker.
    INDETERMINATE = "indeterminate"
    #: The server refused the work and rolled it back (serialization failure, deadlock). The whole operation is
    #: re-run; the server is healthy, so the breaker is untouched.
    CONFLICT = "conflict"
    #: The client's own pool has no connection to give. Not retried (the wait already happened); breaker untouched.
    POOL_EXHAUSTED = "pool_exhausted"

    @property
    def infrastructure(self) -> bool:
        """Whether this fault says the server is unhealthy (and so counts against the breaker)."""
        return self is Fault.UNAVAILABLE or self is Fault.INDETERMINATE


class RequestNotSent(Exception):
    """Internal marker a client raises around a failure that provably happened before its request was sent.

    The pipeline classifies ``original`` as usual, downgrades INDETERMINATE to UNAVAILABLE (so even a
    non-idempotent write may be retried) and never lets this wrapper reach the caller.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original


class PartlyApplied(Exception):
    """Internal marker around a failure of an attempt that sends several requests, after an earlier one was sent.

    A refusal or a conflict of the LAST request does not prove the attempt changed nothing: the pipeline treats
    UNAVAILABLE and CONFLICT as INDETERMINATE (re-sent only when the operation is idempotent).
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(type(original).__name__)
        self.original = original

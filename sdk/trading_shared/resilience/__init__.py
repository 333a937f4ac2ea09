"""The resilient call pipeline shared by every client: classification, circuit breaker, retries, deadline.

Public here: :class:`BreakerState` (the states a breaker reports), :class:`Fault` (what a failure means for retries
and the breaker) and :func:`set_testing`. The machinery (``CallPipeline``, ``CircuitBreaker``, the ``RequestNotSent`` /
``PartlyApplied`` markers) lives in the submodules and is internal.
"""

from .breaker import BreakerState
from .faults import Fault
from .retry import TestingMode, set_testing

__all__ = ["BreakerState", "Fault", "TestingMode", "set_testing"]

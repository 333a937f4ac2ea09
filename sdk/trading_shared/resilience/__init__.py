"""The resilient call pipeline shared by every client: classification, circuit breaker, retries, deadline."""

from .breaker import BreakerState, CircuitBreaker
from .faults import Fault, PartlyApplied, RequestNotSent
from .pipeline import DriverErrors, Pipeline
from .retry import RetryPolicy, set_testing

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "DriverErrors",
    "Fault",
    "PartlyApplied",
    "Pipeline",
    "RequestNotSent",
    "RetryPolicy",
    "set_testing",
]

"""The resilient call pipeline shared by every client: classification, circuit breaker, retries, deadline."""

from .breaker import BreakerState, CircuitBreaker
from .faults import Fault, RequestNotSent
from .pipeline import DriverErrors, Pipeline
from .retry import RetryPolicy, set_testing

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "DriverErrors",
    "Fault",
    "Pipeline",
    "RequestNotSent",
    "RetryPolicy",
    "set_testing",
]

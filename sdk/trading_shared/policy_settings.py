"""The resilience policy every client's settings carry: how calls are retried, and the circuit breaker."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Nested settings are frozen, reject unknown fields and never echo input in errors.
MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class RetrySettings(BaseModel):
    """How a failed call is retried: bounded attempts AND a total deadline, exponential backoff with jitter.

    The wait before attempt ``n + 1`` is ``min(max_backoff, initial_backoff * 2 ** (n - 1) + uniform(0, jitter))``
    (tenacity's ``wait_exponential_jitter``); no wait is started that would end past the deadline.
    """

    model_config = MODEL_CONFIG

    max_attempts: int = Field(
        default=5,
        ge=1,
        le=100,
        description="Attempts per call, the first included. Redis in sentinel or cluster mode, when this is not "
        "set: 100, so that the deadline, not the count, ends a call waiting out a failover.",
    )
    initial_backoff: float = Field(default=0.1, ge=0, le=60, description="Seconds before the first retry.")
    max_backoff: float = Field(default=2.0, ge=0, le=300, description="Cap on one backoff, in seconds.")
    jitter: float = Field(default=0.1, ge=0, le=60, description="Random extra wait, uniform in [0, jitter] seconds.")
    deadline: float = Field(default=10.0, gt=0, le=3600, description="Total seconds a call may take, retries included.")

    @model_validator(mode="after")
    def _backoff_order(self) -> Self:
        if self.max_backoff < self.initial_backoff:
            raise ValueError("max_backoff must be >= initial_backoff")
        return self


class BreakerSettings(BaseModel):
    """The circuit breaker guarding one server: opens after ``fail_max`` consecutive calls failed on infrastructure."""

    model_config = MODEL_CONFIG

    enabled: bool = Field(default=True, description="False turns the breaker off (calls are never rejected).")
    fail_max: int = Field(default=5, ge=1, le=10_000, description="Consecutive failed calls that open it.")
    reset_timeout: float = Field(default=10.0, gt=0, le=3600, description="Seconds open before one trial call.")
    success_threshold: int = Field(default=1, ge=1, le=1000, description="Trial successes needed to close it.")

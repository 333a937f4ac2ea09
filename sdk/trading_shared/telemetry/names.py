"""Every metric, attribute, span-event and unit name the SDK emits, in one place.

Database names follow the OpenTelemetry semantic conventions for database clients (v1.33+ stable core).
Retries and circuit breakers have no convention yet, so they live in the package's own ``trading_shared.``
namespace. Dashboards, alert rules and their tests import the Prometheus spellings from here
(:data:`PROMETHEUS_SERIES`, :data:`PROMETHEUS_LABELS`), so a panel can never query a series the code does not emit.
"""

from __future__ import annotations

from typing import Final

# --- metrics: semantic conventions -------------------------------------------------------------------------------
OPERATION_DURATION: Final = "db.client.operation.duration"
CONNECTION_COUNT: Final = "db.client.connection.count"
CONNECTION_MAX: Final = "db.client.connection.max"
CONNECTION_PENDING_REQUESTS: Final = "db.client.connection.pending_requests"
CONNECTION_TIMEOUTS: Final = "db.client.connection.timeouts"
CONNECTION_WAIT_TIME: Final = "db.client.connection.wait_time"
CONNECTION_USE_TIME: Final = "db.client.connection.use_time"
CONNECTION_CREATE_TIME: Final = "db.client.connection.create_time"

# --- metrics: this package's namespace ---------------------------------------------------------------------------
RETRIES: Final = "trading_shared.client.retries"
BREAKER_STATE: Final = "trading_shared.circuit_breaker.state"
BREAKER_TRANSITIONS: Final = "trading_shared.circuit_breaker.transitions"
BREAKER_REJECTIONS: Final = "trading_shared.circuit_breaker.rejections"
DEAD_LETTERED: Final = "trading_shared.stream.dead_lettered"
MASTER_CHANGES: Final = "trading_shared.redis.master_changes"
RESUBSCRIBES: Final = "trading_shared.redis.resubscribes"
QUERY_SUMMARY_OVERFLOW: Final = "trading_shared.db.query_summary.overflow"
STREAM_GROUP_LAG: Final = "trading_shared.stream.group.lag"
STREAM_GROUP_PENDING: Final = "trading_shared.stream.group.pending"
STREAM_GROUP_OLDEST_PENDING_AGE: Final = "trading_shared.stream.group.oldest_pending_age"
STREAM_MESSAGE_AGE: Final = "trading_shared.stream.message.age"

# --- metrics: messaging semantic conventions ---------------------------------------------------------------------
MESSAGING_SENT_MESSAGES: Final = "messaging.client.sent.messages"
MESSAGING_CONSUMED_MESSAGES: Final = "messaging.client.consumed.messages"

# --- units ---------------------------------------------------------------------------------------------------------
UNIT_SECONDS: Final = "s"
UNIT_CONNECTION: Final = "{connection}"
UNIT_REQUEST: Final = "{request}"
UNIT_TIMEOUT: Final = "{timeout}"
UNIT_RETRY: Final = "{retry}"
UNIT_STATE: Final = "{state}"
UNIT_TRANSITION: Final = "{transition}"
UNIT_CALL: Final = "{call}"
UNIT_MESSAGE: Final = "{message}"
UNIT_CHANGE: Final = "{change}"
UNIT_RECONNECT: Final = "{reconnect}"

# --- attributes: semantic conventions ----------------------------------------------------------------------------
DB_SYSTEM_NAME: Final = "db.system.name"
DB_OPERATION_NAME: Final = "db.operation.name"
DB_NAMESPACE: Final = "db.namespace"
DB_RESPONSE_STATUS_CODE: Final = "db.response.status_code"
DB_QUERY_TEXT: Final = "db.query.text"
DB_QUERY_SUMMARY: Final = "db.query.summary"
DB_COLLECTION_NAME: Final = "db.collection.name"
DB_STORED_PROCEDURE_NAME: Final = "db.stored_procedure.name"
DB_OPERATION_BATCH_SIZE: Final = "db.operation.batch.size"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"
POOL_NAME: Final = "db.client.connection.pool.name"
CONNECTION_STATE: Final = "db.client.connection.state"
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_DESTINATION_NAME: Final = "messaging.destination.name"
MESSAGING_CONSUMER_GROUP_NAME: Final = "messaging.consumer.group.name"
MESSAGING_BATCH_MESSAGE_COUNT: Final = "messaging.batch.message_count"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"

# --- attributes: this package's namespace ------------------------------------------------------------------------
BREAKER_STATE_ATTR: Final = "trading_shared.circuit_breaker.state"
ATTEMPTS: Final = "trading_shared.attempts"
ATTEMPT: Final = "trading_shared.attempt"
RETRY_DELAY: Final = "trading_shared.retry.delay"
FAULT: Final = "trading_shared.fault"
OUTCOME: Final = "trading_shared.outcome"
GAP: Final = "trading_shared.pubsub.gap"
#: The SDK method a PostgreSQL call was made through (``fetchrow``, ``executemany``, ``copy_upsert``...): spans only.
METHOD: Final = "trading_shared.method"

# --- attribute values ----------------------------------------------------------------------------------------------
SYSTEM_POSTGRESQL: Final = "postgresql"
SYSTEM_REDIS: Final = "redis"
STATE_IDLE: Final = "idle"
STATE_USED: Final = "used"
BREAKER_CLOSED: Final = "closed"
BREAKER_OPEN: Final = "open"
BREAKER_HALF_OPEN: Final = "half_open"
ERROR_CANCELLED: Final = "cancelled"
ERROR_CIRCUIT_OPEN: Final = "circuit_open"
ERROR_DEADLINE: Final = "deadline_exceeded"
MESSAGING_SEND: Final = "send"
MESSAGING_RECEIVE: Final = "receive"
MESSAGING_PROCESS: Final = "process"
MESSAGING_SETTLE: Final = "settle"
#: The ``messaging.destination.name`` of every stream the caller did not declare (stream names are Redis keys).
UNDECLARED_STREAM: Final = "_undeclared"

# --- span events ---------------------------------------------------------------------------------------------------
EVENT_ATTEMPT_FAILED: Final = "trading_shared.attempt_failed"
EVENT_CANCELLED: Final = "trading_shared.cancelled"
EVENT_MASTER_CHANGED: Final = "trading_shared.master_changed"
EVENT_RESUBSCRIBED: Final = "trading_shared.resubscribed"

#: Operations that wait on the server on purpose (BRPOP, XREADGROUP with BLOCK): their duration includes the wait, so
#: latency alerts leave them out.
BLOCKING_OPERATIONS: Final = frozenset({"BRPOP", "XREADGROUP"})

INSTRUMENTATION_SCOPE: Final = "trading_shared"

#: Histogram buckets in seconds, fine enough for sub-millisecond Redis calls and long enough for a slow bulk write.
DURATION_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0,
)  # fmt: skip


#: Buckets of the stream message age in seconds: a healthy consumer's milliseconds up to an hour's backlog.
MESSAGE_AGE_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip


def prometheus_label(attribute: str) -> str:
    """Spell an attribute key as the Prometheus exporter does (dots become underscores)."""
    return attribute.replace(".", "_")


def _prom(name: str, suffix: str = "") -> str:
    return name.replace(".", "_") + suffix


#: Every Prometheus series the SDK's metrics become through opentelemetry-exporter-prometheus.
PROMETHEUS_SERIES: Final = frozenset(
    {
        *(_prom(OPERATION_DURATION, s) for s in ("_seconds_bucket", "_seconds_sum", "_seconds_count")),
        *(_prom(CONNECTION_WAIT_TIME, s) for s in ("_seconds_bucket", "_seconds_sum", "_seconds_count")),
        *(_prom(CONNECTION_USE_TIME, s) for s in ("_seconds_bucket", "_seconds_sum", "_seconds_count")),
        *(_prom(CONNECTION_CREATE_TIME, s) for s in ("_seconds_bucket", "_seconds_sum", "_seconds_count")),
        _prom(CONNECTION_COUNT),
        _prom(CONNECTION_MAX),
        _prom(CONNECTION_PENDING_REQUESTS),
        _prom(CONNECTION_TIMEOUTS, "_total"),
        _prom(RETRIES, "_total"),
        _prom(BREAKER_STATE),
        _prom(BREAKER_TRANSITIONS, "_total"),
        _prom(BREAKER_REJECTIONS, "_total"),
        _prom(DEAD_LETTERED, "_total"),
        _prom(MASTER_CHANGES, "_total"),
        _prom(RESUBSCRIBES, "_total"),
        _prom(QUERY_SUMMARY_OVERFLOW, "_total"),
        _prom(STREAM_GROUP_LAG),
        _prom(STREAM_GROUP_PENDING),
        _prom(STREAM_GROUP_OLDEST_PENDING_AGE, "_seconds"),
        *(_prom(STREAM_MESSAGE_AGE, s) for s in ("_seconds_bucket", "_seconds_sum", "_seconds_count")),
        _prom(MESSAGING_SENT_MESSAGES, "_total"),
        _prom(MESSAGING_CONSUMED_MESSAGES, "_total"),
    }
)

#: Every Prometheus label the SDK's metrics carry, plus those the scrape and exporter add.
PROMETHEUS_LABELS: Final = frozenset(
    {
        *(
            prometheus_label(a)
            for a in (
                DB_SYSTEM_NAME,
                DB_OPERATION_NAME,
                DB_QUERY_SUMMARY,
                DB_NAMESPACE,
                DB_RESPONSE_STATUS_CODE,
                SERVER_ADDRESS,
                SERVER_PORT,
                ERROR_TYPE,
                POOL_NAME,
                CONNECTION_STATE,
                BREAKER_STATE_ATTR,
                MESSAGING_SYSTEM,
                MESSAGING_OPERATION_NAME,
                MESSAGING_DESTINATION_NAME,
                MESSAGING_CONSUMER_GROUP_NAME,
            )
        ),
        "job",
        "instance",
        "le",
        "otel_scope_name",
        "otel_scope_version",
    }
)

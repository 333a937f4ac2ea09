"""PostgresClient telemetry: spans and metrics by name and attribute, nothing secret, statement spans opt-in."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from support.otel import Otel
from trading_shared import PostgresClient
from trading_shared.telemetry import names

SECRET_PARAM = "param-4f1c2a"


async def test_one_client_span_per_call_with_semconv_attributes_and_no_parameters(
    make_pg: Callable[..., PostgresClient], otel: Otel, pg_dsn: str
) -> None:
    async with make_pg() as pg:
        await pg.fetchval("SELECT $1::text", SECRET_PARAM)
        with pytest.raises(Exception, match="syntax"):
            await pg.fetch("SELEC 1")
    (span,) = otel.spans("SELECT")
    assert span.kind is SpanKind.CLIENT
    db = pg_dsn.rsplit("/", 1)[1]
    assert span.name == "SELECT"  # the query summary: the statement names no table
    attrs = dict(span.attributes or {})
    assert attrs[names.DB_SYSTEM_NAME] == "postgresql"
    assert attrs[names.DB_OPERATION_NAME] == "SELECT"
    assert attrs[names.DB_QUERY_SUMMARY] == "SELECT"
    assert attrs[names.METHOD] == "fetchval"
    assert attrs[names.DB_QUERY_TEXT] == "SELECT $1::text"  # parameterised text, on by default
    assert attrs[names.DB_NAMESPACE] == db
    assert attrs[names.SERVER_ADDRESS] == "127.0.0.1"
    assert isinstance(attrs[names.SERVER_PORT], int)
    (failed,) = otel.spans("UNKNOWN")  # "SELEC 1" has no operation the summary could name
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes[names.METHOD] == "fetch"
    assert failed.attributes[names.ERROR_TYPE] == "42601"
    assert failed.attributes[names.DB_RESPONSE_STATUS_CODE] == "42601"
    assert failed.attributes[names.DB_QUERY_TEXT] == "SELEC ?"  # the literal 1 replaced
    text = otel.everything_as_text()
    assert SECRET_PARAM not in text


async def test_metrics_cover_operations_pool_and_breaker(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    async with make_pg(min_size=1, max_size=3) as pg:
        await asyncio.gather(*(pg.fetchval("SELECT pg_sleep(0.05)") for _ in range(5)))
        counts = {a[names.CONNECTION_STATE]: v for a, v in otel.points(names.CONNECTION_COUNT)}
        assert set(counts) == {"idle", "used"}
        assert counts["idle"] + counts["used"] <= 3
        assert [v for _, v in otel.points(names.CONNECTION_MAX)] == [3]
        assert [v for _, v in otel.points(names.CONNECTION_PENDING_REQUESTS)] == [0]
        states = {a[names.BREAKER_STATE_ATTR]: v for a, v in otel.points(names.BREAKER_STATE)}
        assert states == {"closed": 1, "open": 0, "half_open": 0}
    (duration,) = [(a, n) for a, n in otel.points(names.OPERATION_DURATION) if a.get(names.DB_QUERY_SUMMARY)]
    assert duration[1] == 5
    assert duration[0][names.DB_QUERY_SUMMARY] == "SELECT pg_sleep"
    assert duration[0][names.DB_OPERATION_NAME] == "pg_sleep"  # the function a SELECT fn() calls
    assert duration[0][names.POOL_NAME] == "postgres"
    assert names.ERROR_TYPE not in duration[0]
    for metric in (names.CONNECTION_WAIT_TIME, names.CONNECTION_USE_TIME, names.CONNECTION_CREATE_TIME):
        points = otel.points(metric)
        assert points, metric
        assert points[0][0] == {names.DB_SYSTEM_NAME: "postgresql", names.POOL_NAME: "postgres"}


async def test_pool_exhaustion_is_a_typed_error_and_counts_a_timeout(
    make_pg: Callable[..., PostgresClient], otel: Otel
) -> None:
    from trading_shared import PoolExhaustedError

    async with make_pg(min_size=1, max_size=1, acquire_timeout=0.2) as pg:
        hog = asyncio.create_task(pg.fetchval("SELECT pg_sleep(1)"))
        await asyncio.sleep(0.1)
        with pytest.raises(PoolExhaustedError) as info:
            await pg.fetchval("SELECT 1")
        assert info.value.may_have_been_applied is False
        assert pg.breaker.failure_count == 0
        await hog
    assert sum(v for _, v in otel.points(names.CONNECTION_TIMEOUTS)) == 1


async def test_no_password_anywhere(pg_server: object, otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    from support.servers import SECURED_PASSWORD, SECURED_ROLE, PostgresServer
    from trading_shared import PostgresSettings, ServiceUnavailableError

    assert isinstance(pg_server, PostgresServer)
    pg_server.set_password(SECURED_ROLE, SECURED_PASSWORD)
    pg_server.require_password(SECURED_ROLE)
    caplog.set_level("DEBUG")
    settings = PostgresSettings(dsn=pg_server.dsn(user=SECURED_ROLE, password=SECURED_PASSWORD),
                                retry={"max_attempts": 2, "initial_backoff": 0.01, "max_backoff": 0.01})  # fmt: skip
    pg = PostgresClient(settings, **otel.providers())
    async with pg:
        assert await pg.fetchval("SELECT current_user") == SECURED_ROLE
        await asyncio.to_thread(pg_server.stop)
        with pytest.raises(ServiceUnavailableError) as info:
            await pg.fetchval("SELECT 1")
    assert SECURED_PASSWORD not in repr(pg) + repr(settings) + str(info.value) + repr(info.value)
    assert SECURED_PASSWORD not in otel.everything_as_text()
    assert SECURED_PASSWORD not in caplog.text


async def test_statement_spans_are_opt_in_children_without_reset_noise(
    make_pg: Callable[..., PostgresClient], otel: Otel
) -> None:
    async with make_pg(statement_spans=True) as pg:
        await pg.fetchval("SELECT $1::int", 5)
        await asyncio.sleep(0.05)  # let the background release (and its reset query) run
    (parent,) = [s for s in otel.spans() if s.parent is None and (s.attributes or {}).get(names.METHOD) == "fetchval"]
    children = [s for s in otel.spans_exporter.get_finished_spans() if s.parent is not None]
    assert [c.parent.span_id for c in children] == [parent.context.span_id]  # type: ignore[union-attr]
    (child,) = children
    attrs = dict(child.attributes or {})
    statement = attrs.get("db.statement", attrs.get(names.DB_QUERY_TEXT))
    assert statement == "SELECT $1::int", attrs  # the statement's own text: the check below reads a real value
    assert "pg_advisory_unlock_all" not in str(statement)
    assert "5" not in str(attrs.get("db.statement.parameters", ""))

    otel.spans_exporter.clear()
    async with make_pg() as pg:
        await pg.fetchval("SELECT 1")
        await asyncio.sleep(0.05)
    spans = otel.spans_exporter.get_finished_spans()
    assert "fetchval" in [(s.attributes or {}).get(names.METHOD) for s in spans], [s.name for s in spans]  # recorded
    assert [s.name for s in spans if s.parent is not None] == []  # and none of them is a statement span


def test_global_providers_set_after_the_client_was_built_are_used(pg_dsn: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from opentelemetry import trace, metrics
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from trading_shared import PostgresClient, PostgresSettings

        async def main():
            pg = PostgresClient(PostgresSettings(dsn={pg_dsn!r}))
            async with pg:
                await pg.fetchval("SELECT 1")          # no provider yet: nothing recorded, nothing breaks
                exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
                tp = TracerProvider(); tp.add_span_processor(SimpleSpanProcessor(exporter))
                trace.set_tracer_provider(tp)
                metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
                await pg.fetchval("SELECT 2")
            names = [s.name.split()[0] for s in exporter.get_finished_spans()]
            metric_names = {{m.name for rm in reader.get_metrics_data().resource_metrics
                            for sm in rm.scope_metrics for m in sm.metrics}}
            print(names, "db.client.operation.duration" in metric_names)

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['SELECT'] True"  # the span of the second call, named by its summary


async def test_pool_timing_metrics_can_be_switched_off(make_pg: Callable[..., PostgresClient], otel: Otel) -> None:
    async with make_pg(pool_timing_metrics=False) as pg:
        await pg.fetchval("SELECT 1")
    assert otel.points(names.CONNECTION_WAIT_TIME) == []
    assert otel.points(names.CONNECTION_USE_TIME) == []
    assert otel.points(names.OPERATION_DURATION)  # the call itself is still measured

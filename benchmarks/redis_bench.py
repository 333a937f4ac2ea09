"""Redis variants: GET and SET (one at a time and from 64 tasks), XADD one at a time (with and without the trace
context field), and ``xadd_bulk`` against a pipelined XADD loop."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rex
import stamina
from opentelemetry.instrumentation.redis import RedisInstrumentor
from pydantic import SecretStr
from redress import AsyncPolicy, AsyncRetry, CircuitBreaker, redis_classifier
from redress.contrib.otel import otel_hooks
from redress.strategies import decorrelated_jitter

from .harness import BulkCase, BulkVariant, LatencyCase, Variant
from .otel import Otel

KEYS = 10_000
VALUE = os.urandom(48).hex().encode()  # 96 bytes
# The SAME timeouts and pool cap on both sides (redis-py's socket_timeout alone costs ~20 us per read).
SOCKET_TIMEOUT = 5.0  # RedisSettings' default
CONNECT_TIMEOUT = 2.0  # RedisSettings' default
MAX_CONNECTIONS = 100  # > 64 tasks: the SDK's pool fails fast when full, redis-py's raw pool too
STREAM = "bench:stream"
CHUNK = 500  # xadd_bulk's default chunk_size; the hand-written loop uses the same
XADD_STREAM = "bench:xadd"
XADD_MAXLEN = 10_000  # every XADD variant trims alike (approximate), so the stream stays small


def _key(i: int) -> str:
    return f"bench:{i % KEYS}"


def _message(i: int) -> dict[str, Any]:
    return {"sym": f"S{i % 500:04d}", "px": f"{100 + (i % 1000) / 100:.2f}", "qty": i % 97 + 1, "side": "b" if i % 2
            else "s", "venue": "bench", "ts": 1_764_000_000_000 + i}  # fmt: skip


@dataclass
class RedisBench:
    """Clients for one event loop; :meth:`close` releases them."""

    url: str
    otel: Otel
    available: bool = True
    unavailable_reason: str = ""
    raw: aioredis.Redis | None = None
    contrib: aioredis.Redis | None = None
    sdk_otel: Any = None
    sdk_plain: Any = None

    def __post_init__(self) -> None:
        try:
            from trading_shared import RedisClient, RedisSettings  # noqa: F401
        except ImportError as exc:
            self.available = False
            self.unavailable_reason = f"trading_shared.RedisClient is not available yet ({exc}): SDK rows skipped"

    def _raw_client(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=CONNECT_TIMEOUT,
            max_connections=MAX_CONNECTIONS,
            protocol=2,
            decode_responses=False,
        )

    async def open(self) -> None:
        self.raw = self._raw_client()
        self.contrib = self._raw_client()
        RedisInstrumentor.instrument_client(self.contrib, tracer_provider=self.otel.tracer_provider)
        await self.raw.flushdb()
        async with self.raw.pipeline(transaction=False) as pipe:
            for i in range(KEYS):
                pipe.set(_key(i), VALUE)
            await pipe.execute()
        if self.available:
            from trading_shared import RedisClient, RedisSettings

            def settings(name: str) -> RedisSettings:
                return RedisSettings(
                    url=SecretStr(self.url),
                    name=name,
                    socket_timeout=SOCKET_TIMEOUT,
                    socket_connect_timeout=CONNECT_TIMEOUT,
                    max_connections=MAX_CONNECTIONS,
                )

            self.sdk_otel = await RedisClient(settings("bench-sdk-otel"), **self.otel.providers()).connect()
            self.sdk_plain = await RedisClient(settings("bench-sdk")).connect()

    async def close(self) -> None:
        for client in (self.sdk_otel, self.sdk_plain):
            if client is not None:
                await client.close()
        for raw in (self.raw, self.contrib):
            if raw is not None:
                await raw.aclose()

    # -- latency cases ---------------------------------------------------------------------------------------------
    def latency_variants(self, command: str) -> list[Variant]:
        raw, contrib, otel = self.raw, self.contrib, self.otel
        assert raw is not None
        assert contrib is not None

        def call(client: Any) -> Callable[[int], Awaitable[Any]]:
            if command == "GET":
                get = client.get

                async def do_get(i: int) -> Any:
                    return await get(_key(i))

                return do_get
            set_ = client.set

            async def do_set(i: int) -> Any:
                return await set_(_key(i), VALUE)

            return do_set

        raw_op = call(raw)

        async def health_checked(i: int) -> Any:
            await raw.ping()  # the replaced client: a PING before every command
            return await raw_op(i)

        async def flush() -> None:
            otel.flush()

        policy = AsyncPolicy(
            retry=AsyncRetry(
                classifier=redis_classifier, strategy=decorrelated_jitter(max_s=2.0), deadline_s=10.0, max_attempts=5
            ),
            circuit_breaker=CircuitBreaker(failure_threshold=5, window_s=60.0, recovery_timeout_s=10.0),
        )
        hooks = otel_hooks(
            tracer=otel.tracer_provider.get_tracer("redress"),
            meter=otel.meter_provider.get_meter("redress"),
        )

        async def redress_op(i: int) -> Any:
            return await policy.call(lambda: raw_op(i), operation=command, **hooks)

        @stamina.retry(
            on=(rex.ConnectionError, rex.TimeoutError), attempts=5, timeout=10.0, wait_initial=0.1, wait_max=2.0,
            wait_jitter=0.1,
        )  # fmt: skip
        async def stamina_op(i: int) -> Any:
            return await raw_op(i)

        variants = [
            Variant("raw", f"redis-py {command}", raw_op),
            Variant("contrib", "redis-py + otel-instrumentation-redis", call(contrib), after=flush),
        ]
        if self.available:
            variants += [
                Variant("sdk_otel", "SDK, OTel SDK (spans+metrics)", call(self.sdk_otel), after=flush),
                Variant("sdk", "SDK, no OTel SDK", call(self.sdk_plain)),
            ]
        variants += [
            Variant("healthcheck", "replaced: PING before each op", health_checked),
            Variant("redress", "redress (retry+breaker+otel hooks)", redress_op, after=flush),
            Variant("stamina", "stamina (retry, instrumented)", stamina_op),
        ]
        return variants

    def xadd_variants(self) -> list[Variant]:
        """XADD of one 6-field message: raw, and the SDK with and without the ``traceparent`` field."""
        raw, otel = self.raw, self.otel
        assert raw is not None

        async def raw_xadd(i: int) -> Any:
            return await raw.xadd(XADD_STREAM, _message(i), maxlen=XADD_MAXLEN, approximate=True)  # type: ignore[arg-type]

        async def flush() -> None:
            otel.flush()

        variants = [Variant("raw", "redis-py XADD", raw_xadd)]
        if not self.available:
            return variants
        sdk, plain = self.sdk_otel, self.sdk_plain
        has_context = "trace_context" in inspect.signature(sdk.xadd).parameters  # absent before stream telemetry

        async def sdk_xadd(i: int) -> Any:
            return await sdk.xadd(XADD_STREAM, _message(i), maxlen=XADD_MAXLEN)

        async def sdk_xadd_no_context(i: int) -> Any:
            return await sdk.xadd(XADD_STREAM, _message(i), maxlen=XADD_MAXLEN, trace_context=False)

        async def plain_xadd(i: int) -> Any:
            return await plain.xadd(XADD_STREAM, _message(i), maxlen=XADD_MAXLEN)

        variants.append(Variant("sdk_otel", "SDK, OTel SDK (spans+metrics), traceparent field", sdk_xadd, after=flush))
        if has_context:
            variants.append(
                Variant("sdk_otel_noctx", "SDK, OTel SDK, trace_context=False", sdk_xadd_no_context, after=flush)
            )
        variants.append(Variant("sdk", "SDK, no OTel SDK", plain_xadd))
        return variants

    def latency_cases(self, ops: int, concurrency: int) -> list[LatencyCase]:
        cases = []
        for command in ("GET", "SET"):
            for conc, n in ((1, ops), (concurrency, ops * 2)):
                label = "one at a time" if conc == 1 else f"{conc} tasks"
                cases.append(LatencyCase("redis", f"{command}, {label}", conc, n, self.latency_variants(command)))
        cases.append(LatencyCase("redis", "XADD, one at a time", 1, ops, self.xadd_variants()))
        return cases

    # -- bulk --------------------------------------------------------------------------------------------------------
    def bulk_cases(self, messages: int) -> list[BulkCase]:
        raw = self.raw
        assert raw is not None
        batch = [_message(i) for i in range(messages)]

        async def reset() -> None:
            await raw.flushdb()  # the private server's own db: the stream and the dedupe keys

        async def pipelined() -> int:
            for lo in range(0, len(batch), CHUNK):
                pipe = raw.pipeline(transaction=False)
                for fields in batch[lo : lo + CHUNK]:
                    pipe.xadd(STREAM, fields)  # type: ignore[arg-type]
                await pipe.execute()
            return len(batch)

        async def flush() -> None:
            self.otel.flush()

        variants = [BulkVariant("raw", f"hand-written pipelined XADD, chunks of {CHUNK}", pipelined, reset)]
        if self.available:
            sdk = self.sdk_otel
            sdk_plain = self.sdk_plain

            async def xadd_bulk() -> int:
                n: int = await sdk.xadd_bulk(STREAM, batch)
                return n

            async def xadd_bulk_plain() -> int:
                n: int = await sdk_plain.xadd_bulk(STREAM, batch)
                return n

            variants += [
                BulkVariant("sdk", "SDK xadd_bulk, OTel SDK (spans+metrics)", xadd_bulk, reset, flush),
                BulkVariant("sdk_plain", "SDK xadd_bulk, no OTel SDK", xadd_bulk_plain, reset),
            ]
        return [BulkCase("bulk", f"xadd {messages:,} messages (6 fields)", variants, baseline="raw")]

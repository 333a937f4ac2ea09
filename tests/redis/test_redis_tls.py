"""RedisClient over TLS (``rediss://``) against a real redis-server with a TLS port and a test CA.

The SDK's TLS connection opens TCP first and runs the handshake after it, so it can tell a plaintext port (a
configuration error, raised at once) from a hung server (an outage, retried). These tests pin both sides of that
line, and that ordinary TLS traffic and certificate checking still work.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions as rex
from redis_testing import CLIENT_NAME, FAST

from support.leaks import eventually, redis_client_count
from support.otel import Otel
from support.procs import free_port
from support.servers import RedisServer, ServerError
from trading_shared import RedisClient, RedisSettings, ServiceUnavailableError
from trading_shared.redis import PlaintextServerError
from trading_shared.telemetry import names


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _make_ca(directory: Path, name: str) -> None:
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        cwd=directory,
    )


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA, a server certificate it signed for IP 127.0.0.1, and a second CA that signed nothing."""
    directory = tmp_path_factory.mktemp("tls")
    _make_ca(directory, "ca")
    _make_ca(directory, "other-ca")
    _openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
        cwd=directory,
    )
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        cwd=directory,
    )
    for path in directory.iterdir():
        path.chmod(0o644)  # redis-server may run as another user than the test
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope="module")
def tls_redis(certs: Path) -> Iterator[tuple[RedisServer, int]]:
    """A private redis-server with a TLS port (its plain port stays for the fixtures' own checks)."""
    tls_port = free_port()
    server = RedisServer(
        extra_args=(
            "--tls-port",
            str(tls_port),
            "--tls-cert-file",
            str(certs / "server.crt"),
            "--tls-key-file",
            str(certs / "server.key"),
            "--tls-ca-cert-file",
            str(certs / "ca.crt"),
            "--tls-auth-clients",
            "no",
        )
    )
    try:
        server.start()
    except ServerError as exc:
        server.cleanup()
        pytest.fail(f"could not start redis-server with TLS: {exc}", pytrace=False)
    try:
        yield server, tls_port
    finally:
        server.cleanup()


def _tls_url(server: RedisServer, tls_port: int, certs: Path, ca: str = "ca") -> str:
    return f"rediss://{server.host}:{tls_port}/0?ssl_ca_certs={certs / (ca + '.crt')}"


@pytest.fixture
def make_tls(tls_redis: tuple[RedisServer, int], certs: Path, otel: Otel) -> Callable[..., RedisClient]:
    server, tls_port = tls_redis

    def make(ca: str = "ca", **overrides: Any) -> RedisClient:
        url = _tls_url(server, tls_port, certs, ca)
        return RedisClient(RedisSettings(**{"url": url, **FAST, **overrides}), **otel.providers())

    return make


def _retries(otel: Otel) -> float:
    return sum(v for _, v in otel.points(names.RETRIES))


async def test_commands_round_trip_over_tls_with_the_certificate_verified(
    make_tls: Callable[..., RedisClient], tls_redis: tuple[RedisServer, int], otel: Otel
) -> None:
    server, _ = tls_redis
    plain_url = server.url()
    async with make_tls() as r:
        assert await r.set("tls-key", b"\x00value\xff") is True
        assert await r.get("tls-key") == b"\x00value\xff"
        assert await r.incr("tls-counter") == 1
        assert await r.xadd_bulk("tls-stream", [{"n": i} for i in range(50)]) == 50
        assert await asyncio.to_thread(server.cli, "XLEN", "tls-stream") == 50
        assert await redis_client_count(plain_url, CLIENT_NAME) >= 1
    assert _retries(otel) == 0

    async def gone() -> bool:
        return await redis_client_count(plain_url, CLIENT_NAME) == 0

    assert await eventually(gone)


async def test_certificate_from_another_ca_fails_fast_once_and_leaves_the_breaker_closed(
    make_tls: Callable[..., RedisClient], otel: Otel
) -> None:
    r = make_tls(ca="other-ca", breaker={"fail_max": 1})
    try:
        started = time.monotonic()
        with pytest.raises(rex.ConnectionError) as info:
            await r.get("k")
        assert time.monotonic() - started < 0.3
        assert not isinstance(info.value, ServiceUnavailableError | PlaintextServerError), repr(info.value)
        assert "certificate verify failed" in str(info.value)
        assert _retries(otel) == 0
        assert r.breaker.state.value == "closed"
        assert r.breaker.failure_count == 0
    finally:
        await r.close()


async def test_hung_tls_server_is_an_outage_not_a_configuration_error(
    make_tls: Callable[..., RedisClient], tls_redis: tuple[RedisServer, int], otel: Otel
) -> None:
    """SIGSTOP: the kernel still completes TCP handshakes, the TLS handshake and the plain probe get no answer.
    The handshake timeout must stay an outage (retried, then ServiceUnavailableError), never PlaintextServerError."""
    server, _ = tls_redis
    r = make_tls(socket_connect_timeout=0.2, retry={"max_attempts": 2, "initial_backoff": 0.01, "deadline": 3.0})
    await asyncio.to_thread(server.freeze)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError) as info:
            await r.get("k")
        took = time.monotonic() - started
    finally:
        await asyncio.to_thread(server.thaw)
    try:
        assert not isinstance(info.value.__cause__, PlaintextServerError), repr(info.value.__cause__)
        assert _retries(otel) == 1
        assert took < 2 * (0.2 + 0.25) + 0.5  # two attempts, each a handshake timeout and a probe timeout
        assert await r.get("k") is None  # back once the server is
    finally:
        await r.close()


def test_tls_works_under_uvloop_too(tls_redis: tuple[RedisServer, int], certs: Path) -> None:
    """The handshake after TCP uses ``StreamWriter.start_tls`` (``loop.start_tls``): uvloop implements it too."""
    import uvloop

    server, tls_port = tls_redis
    url = _tls_url(server, tls_port, certs)

    async def main() -> bytes | None:
        async with RedisClient(RedisSettings(url=url, **FAST)) as r:
            await r.set("uvloop-key", b"v")
            return await r.get("uvloop-key")

    assert uvloop.run(main()) == b"v"

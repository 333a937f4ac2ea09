"""Private names of dependencies: read only in trading_shared.compat, each checked against the installed version.

A failure of a ``test_*_private_names_exist`` test names the dependency, its version and the private name that is
gone: the SDK then runs on the fallback docs/dependencies.md describes (tested below), so either restore the name's
replacement in the compat module or lower the range's upper bound.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis.asyncio.connection as rconn
import redis.exceptions as rex

import trading_shared
from trading_shared.compat import asyncio as asyncio_compat
from trading_shared.compat import asyncpg as asyncpg_compat
from trading_shared.compat import otel as otel_compat
from trading_shared.compat import otel_asyncpg
from trading_shared.compat import redis as redis_compat

PACKAGE = Path(trading_shared.__file__).resolve().parent
COMPAT = PACKAGE / "compat"

#: Private-looking names that are public API: namedtuple methods, and ``sys._getframe`` (documented in the library
#: reference).
PUBLIC_BY_CONVENTION = frozenset({"_replace", "_asdict", "_fields", "_make", "_getframe"})


# -- each private name is still there ----------------------------------------------------------------------------------
def test_opentelemetry_api_private_names_exist() -> None:
    assert otel_compat.missing() == []


def test_opentelemetry_instrumentation_asyncpg_private_names_exist() -> None:
    assert otel_asyncpg.missing() == []


def test_redis_py_private_names_exist() -> None:
    assert redis_compat.missing() == []


def test_asyncpg_private_names_exist() -> None:
    assert asyncpg_compat.missing() == []


def test_asyncio_private_names_exist() -> None:
    assert asyncio_compat.missing() == []


def test_a_missing_name_is_described_with_the_dependency_and_its_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(otel_compat, "PROXY_METER_PROVIDER", None)
    [message] = otel_compat.missing()
    assert message.startswith("opentelemetry-api "), message
    assert "_ProxyMeterProvider" in message and "docs/dependencies.md" in message
    from importlib.metadata import version

    assert version("opentelemetry-api") in message


# -- the documented fallbacks ------------------------------------------------------------------------------------------
def test_otel_fallback_unknown_globals_mean_ask_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry import trace
    from opentelemetry.metrics import _internal

    monkeypatch.delattr(trace, "_TRACER_PROVIDER")
    monkeypatch.delattr(_internal, "_METER_PROVIDER")
    assert otel_compat.tracer_provider_unset() is False
    assert otel_compat.meter_provider_unset() is False


def test_otel_fallback_recognises_the_proxy_meter_provider_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.metrics import NoOpMeterProvider
    from opentelemetry.metrics._internal import _ProxyMeterProvider

    monkeypatch.setattr(otel_compat, "PROXY_METER_PROVIDER", None)
    assert otel_compat.is_proxy_meter_provider(_ProxyMeterProvider())
    assert not otel_compat.is_proxy_meter_provider(NoOpMeterProvider())


def test_statement_spans_fail_naming_the_package_when_a_private_name_is_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

    monkeypatch.delattr(AsyncPGInstrumentor, "_do_execute")
    with pytest.raises(
        ImportError, match=r"opentelemetry-instrumentation-asyncpg .*_do_execute.*statement_spans=False"
    ):
        otel_asyncpg.statement_executor(None)


def test_redis_fallback_streams_absent_are_none_and_errors_parse_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    conn = SimpleNamespace()
    assert redis_compat.stream_reader(conn) is None
    assert redis_compat.stream_writer(conn) is None
    monkeypatch.setattr(redis_compat, "_BaseParser", None)
    error = redis_compat.parse_error("ERR Protocol error: invalid bulk length")
    assert type(error) is rex.ResponseError
    assert str(error) == "ERR Protocol error: invalid bulk length"


def test_redis_parse_error_maps_codes_like_redis_py() -> None:
    assert isinstance(redis_compat.parse_error("NOSCRIPT No matching script"), rex.NoScriptError)


def test_redis_parent_hooks_are_redis_pys_own() -> None:
    for hook in redis_compat.CONNECT_HOOKS:
        assert getattr(rconn.SSLConnection, hook) is getattr(rconn.Connection, hook) or hook == "_connection_arguments"


def test_asyncio_fallback_no_buffer_is_empty() -> None:
    assert asyncio_compat.buffered(None) == b""
    assert asyncio_compat.buffered(SimpleNamespace()) == b""


async def test_asyncio_buffered_is_what_the_reader_holds_unread() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"-ERR Protocol error\r\n")
    assert asyncio_compat.buffered(reader) == b"-ERR Protocol error\r\n"
    assert await reader.readline() == b"-ERR Protocol error\r\n"  # not consumed by the look


def test_asyncpg_fallback_unknown_address_is_none() -> None:
    assert asyncpg_compat.connected_address(SimpleNamespace()) is None
    assert asyncpg_compat.connected_address(SimpleNamespace(_addr="/tmp/.s.PGSQL.5432")) is None
    assert asyncpg_compat.connected_address(SimpleNamespace(_addr=("db1", 5433))) == ("db1", 5433)


# -- no private access to dependencies outside compat/ -----------------------------------------------------------------
def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules() -> list[tuple[Path, ast.Module]]:
    return [
        (path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
        if COMPAT not in path.parents
    ]


def _own_private_names(modules: list[tuple[Path, ast.Module]]) -> set[str]:
    """Private names the SDK defines itself: functions, classes, module and class attributes, ``self._x = ...``."""
    own: set[str] = set()
    for _, tree in modules:
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                own.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                own.add(node.id)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                own.add(node.target.id)
            elif isinstance(node, ast.alias) and node.asname:
                own.add(node.asname)
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                own.add(node.attr)
    return {name for name in own if _private(name)}


def _violations(path: Path, tree: ast.Module, own: set[str]) -> list[str]:
    where = path.relative_to(PACKAGE.parent)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".") + [alias.name for alias in node.names]
            if not node.module.startswith("trading_shared") and any(map(_private, parts)):
                found.append(f"{where}:{node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [
                f"{where}:{node.lineno}: import {a.name}" for a in node.names if any(map(_private, a.name.split(".")))
            ]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in PUBLIC_BY_CONVENTION:
            value = node.value
            via_super = isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super"
            if via_super or node.attr not in own:
                found.append(f"{where}:{node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append(f"{where}:{node.lineno}: {node.func.id}(..., {node.args[1].value!r})")
    return sorted(found, key=lambda f: int(f.split(":")[1]))


def test_no_private_name_of_a_dependency_is_used_outside_compat() -> None:
    """Matched by name, not type: a dependency's private name the SDK also defines for itself (``_tracer``) is not
    caught, nor are ``self._connect`` / ``self._connection_arguments`` (the SDK's overrides of redis-py's hooks,
    whose presence :func:`trading_shared.compat.redis.missing` checks)."""
    modules = _modules()
    own = _own_private_names(modules)
    found = [v for path, tree in modules for v in _violations(path, tree, own)]
    assert found == [], "use trading_shared.compat for these private names:\n" + "\n".join(found)


def test_the_scan_finds_what_it_is_meant_to_find() -> None:
    source = (
        "from redis._parsers.base import BaseParser\n"
        "import opentelemetry.metrics._internal\n"
        "x = getattr(conn, '_writer', None)\n"
        "y = conn._addr\n"
        "class C(Base):\n"
        "    def _connect(self):\n"
        "        super()._connect()\n"
        "        self._reader.close()\n"
        "        return self._own\n"
        "    def __init__(self):\n"
        "        self._own = 1\n"
        "z = parts._replace(netloc='')\n"
    )
    tree = ast.parse(source)
    own = _own_private_names([(PACKAGE / "x.py", tree)])
    found = _violations(PACKAGE / "x.py", tree, own)
    assert [f.split(": ", 1)[1] for f in found] == [
        "from redis._parsers.base import ...",
        "import opentelemetry.metrics._internal",
        "getattr(..., '_writer')",
        "._addr",
        "._connect",
        "._reader",
    ]

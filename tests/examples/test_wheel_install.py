"""The built wheel installs into an application's venv that already has another in-range OpenTelemetry SDK.

As a user would: build the wheel, make a fresh venv, install the application's own ``opentelemetry-sdk`` (a release
other than the one this repository's venv has, inside the declared range), then ``pip install`` the wheel (its
dependencies from PyPI). pip must keep the application's OpenTelemetry; the README's quick start must run there, the
SDK's spans must reach that OpenTelemetry SDK, and the packaged dashboards must export. About a minute (pip).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import textwrap
import zipfile
from importlib.metadata import version
from pathlib import Path

import pytest
from example_runner import ROOT, example_env
from test_quickstart import DOC, quickstart_snippet

from trading_shared import dashboards

pytestmark = pytest.mark.slow

#: The application's OpenTelemetry SDK: in the declared range (pyproject.toml), not the newest, not the dev venv's.
APP_OTEL = "1.40.0"

_TELEMETRY_CHECK = """
import asyncio

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from trading_shared import PostgresClient

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)


async def main() -> None:
    async with PostgresClient() as pg:
        await pg.fetchval("SELECT count(*) FROM pg_class")


asyncio.run(main())
print(sorted({span.name for span in exporter.get_finished_spans()}))
"""


async def _run(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *map(str, args), env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 300)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise AssertionError(f"timed out: {args}") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{text}"
    return text


async def test_the_wheel_installs_beside_another_otel_sdk_and_the_quick_start_runs(
    pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    assert version("opentelemetry-sdk") != APP_OTEL, "pick another APP_OTEL: the point is a different release"
    pip_env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_REQUIRE_VIRTUALENV", "PYTHONPATH"))}
    source = tmp_path / "source"  # a copy: pip builds in the source tree, and other test runs may build too
    shutil.copytree(ROOT / "sdk", source / "sdk", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path / "dist"
    await _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, source, env=pip_env)
    [wheel] = dist.glob("trading_shared-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {f"trading_shared/dashboards/files/{name}" for name in dashboards.FILES} <= names
    assert "trading_shared/py.typed" in names

    venv = tmp_path / "app-venv"
    await _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    await _run(python, "-m", "pip", "install", "-q", f"opentelemetry-sdk=={APP_OTEL}", env=pip_env)
    await _run(python, "-m", "pip", "install", "-q", wheel, env=pip_env)
    versions = "from importlib.metadata import version as v; print(v('opentelemetry-sdk'), v('opentelemetry-api'))"
    installed = await _run(python, "-c", versions)
    assert installed.split() == [APP_OTEL, APP_OTEL], "pip replaced the application's OpenTelemetry"

    app = tmp_path / "app"  # not the repository: nothing of sdk/ on the path
    app.mkdir()
    (app / "quickstart.py").write_text(quickstart_snippet(DOC.read_text()))
    (app / "telemetry.py").write_text(textwrap.dedent(_TELEMETRY_CHECK))
    env = example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url)
    assert (await _run(python, "quickstart.py", env=env, cwd=app)).split() == ["42", "b'hello'"]
    # the SDK's span, named by its query summary, in the app's SDK
    assert "'SELECT pg_class'" in await _run(python, "telemetry.py", env=env, cwd=app)

    await _run(python, "-m", "trading_shared.dashboards", "export", app / "dashboards", cwd=app)
    for name in dashboards.FILES:
        assert (app / "dashboards" / name).read_bytes() == (ROOT / "dashboards" / name).read_bytes(), name

"""Run the examples as subprocesses, as a user would, with a clean environment."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
_PREFIXES = ("POSTGRES_", "REDIS_", "OTEL_", "DEMO_")


def example_env(**values: str) -> dict[str, str]:
    """The test process's environment without any POSTGRES_/REDIS_/OTEL_/DEMO_ variable, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_PREFIXES)}
    env.update(values)
    return env


@dataclass
class Result:
    """What a finished example left behind."""

    returncode: int
    output: str


async def run_example(script: str, *args: str, env: dict[str, str], timeout: float = 60) -> Result:
    """Run ``examples/<script>`` with the test's interpreter; stdout and stderr together."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / script),
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, _ = await proc.communicate()
        raise AssertionError(f"{script} did not finish within {timeout}s:\n{out.decode(errors='replace')}") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(errors="replace"))

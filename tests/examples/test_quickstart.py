"""The quick start of README.md runs exactly as written, against the private servers."""

from __future__ import annotations

import re
from pathlib import Path

from example_runner import ROOT, example_env, run_example

DOC = ROOT / "README.md"
MARKER = "<!-- quickstart:"


def quickstart_snippet(markdown: str) -> str:
    """The first ```python block after the quick-start marker."""
    after = markdown[markdown.index(MARKER) :]
    found = re.search(r"```python\n(.*?)```", after, re.S)
    assert found, "no python block after the quick-start marker"
    return found.group(1)


def test_the_snippet_is_at_most_15_lines_of_code() -> None:
    code = [line for line in quickstart_snippet(DOC.read_text()).splitlines() if line.strip()]
    assert len(code) <= 15, len(code)


async def test_the_snippet_runs_as_written(pg_dsn: str, redis_url: str, tmp_path: Path) -> None:
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart_snippet(DOC.read_text()))
    result = await run_example(str(script), env=example_env(POSTGRES_DSN=pg_dsn, REDIS_URL=redis_url))
    assert result.returncode == 0, result.output
    assert result.output.split() == ["42", "b'hello'"], result.output

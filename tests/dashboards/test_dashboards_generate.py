"""The committed files are exactly what the generator produces, and --check notices when they are not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dashboards.generate as generate
import dashboards.render as render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_files_are_current() -> None:
    assert generate.check(render.outputs(), render.GENERATED_DIR) == []


def test_generation_is_deterministic() -> None:
    assert render.outputs() == render.outputs()


def test_check_command_passes_on_the_committed_files() -> None:
    done = subprocess.run(
        [sys.executable, "dashboards/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


def test_check_reports_changed_missing_and_stale_files(tmp_path: Path) -> None:
    (tmp_path / "changed.json").write_text("{}\n")
    (tmp_path / "stale.json").write_text("{}\n")
    expected = {tmp_path / "changed.json": '{"a": 1}\n', tmp_path / "missing.json": "{}\n"}

    problems = generate.check(expected, tmp_path)

    assert len(problems) == 3
    assert '+{"a": 1}' in problems[0]
    assert "missing.json" in problems[1]
    assert "stale.json: stale" in problems[2]


def test_write_then_check_is_clean(tmp_path: Path) -> None:
    (tmp_path / "stale.json").write_text("{}\n")
    expected = {tmp_path / "a.json": "{}\n", tmp_path / "sub" / "b.yml": "x: 1\n"}

    generate.write(expected, tmp_path)

    assert generate.check(expected, tmp_path) == []
    assert not (tmp_path / "stale.json").exists()

"""The dashboards, rules and runbook in the wheel are the repository's, and the export command writes them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trading_shared import dashboards

ROOT = Path(__file__).resolve().parents[2]


def test_the_packaged_files_are_the_repositorys_byte_for_byte() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_dashboards.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr + "\nrun: python3 scripts/package_dashboards.py"


def test_every_generated_artefact_of_the_repository_is_packaged() -> None:
    repo = ROOT / "dashboards"
    artefacts = {
        *(p.relative_to(repo).as_posix() for p in (repo / "generated").glob("*.json")),
        *(p.relative_to(repo).as_posix() for d in ("alertmanager", "grafana-alerting") for p in (repo / d).glob("*")),
        *(p.relative_to(repo).as_posix() for p in (repo / "provisioning").rglob("*.yaml")),
        "alerts/trading-shared.rules.yml",
        "runbook.md",
    }
    assert artefacts == set(dashboards.FILES)


def test_export_writes_every_file_unchanged_by_default(tmp_path: Path) -> None:
    written = dashboards.export(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in written] == list(dashboards.FILES)
    for name in dashboards.FILES:
        assert (tmp_path / name).read_bytes() == (ROOT / "dashboards" / name).read_bytes(), name


def test_export_sets_the_job_selector_and_runbook_url_of_the_alerts_only(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trading_shared.dashboards", "export", str(tmp_path), "--job-selector",
         'job=~"orders|risk"', "--runbook-url", "https://wiki.example.com/trading-shared/runbook"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(tmp_path / name) for name in dashboards.FILES]
    for name in dashboards.ALERT_FILES:
        text = (tmp_path / name).read_text()
        assert 'job!=""' not in text and text.count('{job=~"orders|risk"') >= 20, name
        assert "dashboards/runbook.md" not in text, name
        assert "runbook_url: https://wiki.example.com/trading-shared/runbook#tradingsharedcircuitbreakeropen" in text
    for name in set(dashboards.FILES) - set(dashboards.ALERT_FILES):
        assert (tmp_path / name).read_bytes() == (ROOT / "dashboards" / name).read_bytes(), name

"""The documentation covers every setting and every metric the code has, and the settings tables are current."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trading_shared.settings import BreakerSettings, PostgresSettings, RedisSettings, RetrySettings
from trading_shared.telemetry import names

ROOT = Path(__file__).resolve().parents[2]
CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
METRICS = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")


def test_every_setting_and_its_environment_variable_is_documented() -> None:
    for model, prefix in ((PostgresSettings, "POSTGRES_"), (RedisSettings, "REDIS_")):
        for field in model.model_fields:
            if field in ("retry", "breaker"):
                for nested, sub in (("RETRY__", RetrySettings), ("BREAKER__", BreakerSettings)):
                    if field.upper() + "__" == nested:
                        for name in sub.model_fields:
                            assert f"`{prefix}{nested}{name.upper()}`" in CONFIGURATION, name
                continue
            assert f"`{prefix}{field.upper()}`" in CONFIGURATION, f"{model.__name__}.{field}"


def test_the_settings_tables_are_the_scripts_output() -> None:
    script = ROOT / "scripts" / "settings_table.py"
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True).stdout
    assert out.strip() in CONFIGURATION, "docs/configuration.md is stale: paste `python scripts/settings_table.py`"


def test_every_metric_is_in_the_metrics_reference() -> None:
    prefixes = ("db.client.", "trading_shared.client.", "trading_shared.circuit_breaker.", "trading_shared.stream.",
                "trading_shared.redis.")  # fmt: skip
    metrics = [v for k, v in vars(names).items() if k.isupper() and isinstance(v, str) and v.startswith(prefixes)]
    metrics = [m for m in metrics if m != names.BREAKER_STATE_ATTR]
    for metric in metrics:
        assert f"`{metric}`" in METRICS, metric


def test_no_placeholder_is_left() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        assert "_PLACEHOLDER" not in page.read_text(encoding="utf-8"), page.name

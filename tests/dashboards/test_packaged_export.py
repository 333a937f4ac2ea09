"""The export command's substitutions give exactly what the generator writes for the same settings."""

from __future__ import annotations

import dataclasses

from dashboards import config
from dashboards.render import outputs
from trading_shared import dashboards as packaged

SELECTOR = 'job=~"orders|risk"'
RUNBOOK = "https://wiki.example.com/trading-shared/runbook.md"


def _by_name(cfg: config.AlertConfig) -> dict[str, str]:
    root = config.__file__.rsplit("/", 1)[0] + "/"
    return {str(path).removeprefix(root): text for path, text in outputs(cfg).items()}


def test_default_export_is_the_generators_production_output() -> None:
    for name, text in _by_name(config.PRODUCTION).items():
        assert packaged.render(name) == text, name


def test_selector_and_runbook_substitutions_equal_regenerating_with_them() -> None:
    cfg = dataclasses.replace(config.PRODUCTION, job_matchers=(SELECTOR,), runbook_base_url=RUNBOOK)
    regenerated = _by_name(cfg)
    assert set(regenerated) <= set(packaged.FILES)
    for name, text in regenerated.items():
        assert packaged.render(name, job_selector=SELECTOR, runbook_url=RUNBOOK) == text, name

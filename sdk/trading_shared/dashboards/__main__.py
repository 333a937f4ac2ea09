"""``python -m trading_shared.dashboards export DIR``: write this SDK version's dashboards, rules and runbook."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_JOB_SELECTOR, DEFAULT_RUNBOOK_URL, export


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m trading_shared.dashboards",
        description="Write the Grafana dashboards, Prometheus alert rules, Grafana alert provisioning, Alertmanager "
        "routing and runbook of the installed trading-shared version.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export_cmd = commands.add_parser("export", help="write the files under DIR (created if missing)")
    export_cmd.add_argument("directory", metavar="DIR", type=Path)
    export_cmd.add_argument(
        "--job-selector",
        metavar="MATCHER",
        help=f"PromQL matcher every alert rule selects with, e.g. 'job=~\"orders|risk\"' "
        f"(default: {DEFAULT_JOB_SELECTOR})",
    )
    export_cmd.add_argument(
        "--runbook-url",
        metavar="URL",
        help=f"where runbook.md is browsable; alerts link to URL#<alert> (default: {DEFAULT_RUNBOOK_URL})",
    )
    args = parser.parse_args(argv)
    for path in export(args.directory, job_selector=args.job_selector, runbook_url=args.runbook_url):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

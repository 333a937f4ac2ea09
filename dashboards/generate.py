"""Regenerate the committed dashboards and alert files, or check that they are current.

Usage::

    python dashboards/generate.py           # write generated/, alerts/, grafana-alerting/, alertmanager/
    python dashboards/generate.py --check   # exit 1 (and show a diff) if any committed file differs
    python dashboards/generate.py --runbook-url https://git.example.com/team/trading-shared/blob/main/dashboards/runbook.md

``--runbook-url`` sets where every alert's ``runbook_url`` points (default: ``dashboards/runbook.md``, the runbook's
path in this repository); pass the same value with ``--check``.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this directory is sys.path[0]: its modules would shadow others (and it is not a package root).
if sys.path and Path(sys.path[0] or ".").resolve() == ROOT / "dashboards":
    sys.path[0] = str(ROOT)


def _display(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _stale(expected: dict[Path, str], generated_dir: Path) -> list[Path]:
    return sorted(p for p in generated_dir.glob("*.json") if p not in expected)


def check(expected: dict[Path, str], generated_dir: Path) -> list[str]:
    """Differences between ``expected`` and the files on disk, as unified diffs / messages (empty: all current)."""
    problems = []
    for path, text in expected.items():
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            rel = _display(path)
            diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True), f"a/{rel}", f"b/{rel}")
            problems.append("".join(diff) or f"{rel}: missing")
    problems += [f"{_display(p)}: stale, not generated any more" for p in _stale(expected, generated_dir)]
    return problems


def write(expected: dict[Path, str], generated_dir: Path) -> None:
    """Write every file that changed and delete stale generated dashboards."""
    for path, text in expected.items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {_display(path)}")
    for path in _stale(expected, generated_dir):
        path.unlink()
        print(f"deleted {_display(path)}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if a committed file is not current")
    parser.add_argument(
        "--runbook-url",
        metavar="URL",
        help="where dashboards/runbook.md is browsable; alerts link to URL#<alert> (default: its repository path)",
        default=None,
    )
    args = parser.parse_args(argv)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import dataclasses

    from dashboards import config
    from dashboards.render import GENERATED_DIR, outputs

    cfg = config.PRODUCTION
    if args.runbook_url is not None:
        cfg = dataclasses.replace(cfg, runbook_base_url=args.runbook_url)
    expected = outputs(cfg)
    if args.check:
        problems = check(expected, GENERATED_DIR)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print("Generated files are out of date: run `python dashboards/generate.py`.", file=sys.stderr)
        return 1 if problems else 0
    write(expected, GENERATED_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())

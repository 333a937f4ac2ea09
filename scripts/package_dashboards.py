"""Copy the generated dashboards, rules and runbook into the package (sdk/trading_shared/dashboards/files/).

Usage::

    python3 scripts/package_dashboards.py          # after `python dashboards/generate.py`
    python3 scripts/package_dashboards.py --check  # exit 1 if a packaged copy differs (also a unit test)
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "dashboards"
PACKAGE = ROOT / "sdk" / "trading_shared" / "dashboards"
TARGET = PACKAGE / "files"


def _files() -> tuple[str, ...]:
    """The package's list of files (trading_shared.dashboards.FILES), read without importing trading_shared."""
    spec = importlib.util.spec_from_file_location("_packaged_dashboards", PACKAGE / "__init__.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files: tuple[str, ...] = module.FILES
    return files


FILES = _files()


def differences() -> list[str]:
    """Packaged files that differ from, or are missing beside, the repository's copies; stale packaged files."""
    problems = [
        name
        for name in FILES
        if not (TARGET / name).is_file() or (TARGET / name).read_bytes() != (SOURCE / name).read_bytes()
    ]
    packaged = {p.relative_to(TARGET).as_posix() for p in TARGET.rglob("*") if p.is_file()}
    return problems + sorted(f"{name} (stale)" for name in packaged - set(FILES))


def main() -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args()
    problems = differences()
    if args.check:
        for problem in problems:
            print(f"packaged dashboards differ: {problem}", file=sys.stderr)
        return 1 if problems else 0
    for name in FILES:
        (TARGET / name).parent.mkdir(parents=True, exist_ok=True)
        (TARGET / name).write_bytes((SOURCE / name).read_bytes())
    for problem in problems:
        if problem.endswith(" (stale)"):
            (TARGET / problem.removesuffix(" (stale)")).unlink()
        print(f"updated {problem}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Second CI pass (run by scripts/test.sh): unit, operations, telemetry and a reliability subset on the LOWEST version
# of every declared dependency range, in .venv-lowest, from constraints generated from pyproject.toml
# (scripts/lowest_constraints.py), so the lower bounds cannot drift from what is tested. docs/dependencies.md.
# Idempotent: a second run installs nothing new. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-lowest
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
constraints="$venv/constraints.txt"
.venv/bin/python scripts/lowest_constraints.py > "$constraints"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c "$constraints" -e '.[otel,statement-spans,fast]' pytest pytest-asyncio PyYAML
"$venv/bin/python" -m pip check
echo "== lowest versions: $("$venv/bin/python" -m pip freeze | grep -iE '^(asyncpg|redis|tenacity|pybreaker|orjson|pydantic|pydantic-settings|opentelemetry-(api|sdk|instrumentation-asyncpg)|uvloop|hiredis)==' | tr '\n' ' ')"

tests=(
    tests/unit
    tests/redis/test_redis_operations.py tests/redis/test_redis_telemetry.py tests/redis/test_redis_classify.py
    tests/redis/test_redis_lifecycle.py tests/redis/test_redis_tls.py tests/redis/test_redis_streams.py
    tests/postgres/test_operations.py tests/postgres/test_telemetry.py tests/postgres/test_lifecycle.py
    tests/reliability/test_redis_targeted.py tests/reliability/test_pg_targeted.py tests/reliability/test_bad_input.py
)
"$venv/bin/pytest" -q "${tests[@]}" "$@"

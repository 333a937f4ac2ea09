"""The message parameter types accept plain dicts: ``Mapping`` is invariant in its key, so ``Mapping[str | bytes, V]``
alone would reject ``dict[str, str]``. Checked by running mypy (strict, as for the SDK) on this very file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from trading_shared import RedisClient
from trading_shared.redis import StreamEntry


async def _typed_usage(r: RedisClient, entry: StreamEntry) -> int:
    text: list[dict[str, str]] = [{"sym": "BTC-USD", "px": "101.25"}]
    raw: list[dict[bytes, bytes]] = [{b"sym": b"BTC-USD"}]
    mixed: list[dict[str | bytes, bytes | str | int | float]] = [{"seq": 1, b"raw": b"\x00"}]
    numbers: dict[str, int] = {"seq": 1}
    added = await r.xadd_bulk("s", text) + await r.xadd_bulk("s", raw) + await r.xadd_bulk("s", mixed)
    await r.xadd("s", numbers)
    await r.xadd("s", entry.fields)  # a consumed entry's fields (dict[bytes, bytes]) can be re-added as they are
    await r.hset("h", mapping={"a": "1"})
    await r.hset("h", mapping={b"a": b"1"})
    return added


def test_message_types_accept_plain_dicts_under_mypy() -> None:
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--follow-imports=silent", __file__],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr

"""COPY paths with json/jsonb columns: the SDK's JSON codecs are binary, so COPY can encode them."""

from __future__ import annotations

from collections.abc import Callable

from trading_shared import PostgresClient


async def test_copy_upsert_and_copy_records_take_json_and_jsonb(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        await pg.execute("CREATE TABLE docs (id int PRIMARY KEY, j json, jb jsonb)")
        rows = [(i, {"n": i}, {"tags": ["a", "\u00e9"], "ok": True}) for i in range(3)]
        assert await pg.copy_upsert("docs", rows, columns=["id", "j", "jb"], key_columns=["id"]) == 3
        assert await pg.copy_records("docs", [(9, [1, 2], None)], columns=["id", "j", "jb"]) == 1
        got = await pg.fetch("SELECT id, j, jb FROM docs ORDER BY id")
        assert [tuple(r) for r in got] == [*rows, (9, [1, 2], None)]
        assert await pg.fetchval("SELECT jb->'tags'->>1 FROM docs WHERE id = 0") == "\u00e9"
        assert await pg.fetchval("SELECT $1::jsonb", {"x": [1, None]}) == {"x": [1, None]}

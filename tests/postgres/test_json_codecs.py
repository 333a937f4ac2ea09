"""json/jsonb codecs: orjson, as the replaced client encoded; everything json.dumps handled still round-trips."""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from decimal import Decimal

import asyncpg
import pytest

from trading_shared import PostgresClient
from trading_shared.postgres import codecs

# Values json.dumps encoded (the SDK's previous codec): each must come back as json.loads(json.dumps(v)) did.
BEFORE = [
    {"bid": 1.5, "levels": [1, 2], "venue": "x\u00e9", "nested": {"ok": True, "none": None}},
    [1, -2, 3.25, "s", True, False, None, [], {}],
    {"big": 2**70, "neg": -(2**65), "max64": 2**64 - 1},  # beyond orjson's 64 bits: json.dumps still encodes
    {3: "int key", 2.5: "float key", True: "bool key", None: "null key"},
    ("tuple", 1),
    "plain string",
    12345678901234567890123,
    1e16,
]


class Side(enum.Enum):
    BUY = "buy"


@pytest.mark.parametrize("value", BEFORE, ids=range(len(BEFORE)))
async def test_values_json_dumps_handled_round_trip_as_before(
    make_pg: Callable[..., PostgresClient], value: object
) -> None:
    expected = json.loads(json.dumps(value))
    async with make_pg() as pg:
        assert await pg.fetchval("SELECT $1::jsonb", value) == expected
        assert await pg.fetchval("SELECT $1::json", value) == expected
        # and what the server stored is the same JSON as json.dumps would have written
        assert await pg.fetchval("SELECT $1::jsonb = $2::text::jsonb", value, json.dumps(value)) is True


async def test_values_the_replaced_client_encoded_with_orjson(make_pg: Callable[..., PostgresClient]) -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    doc = {
        "aware": stamp,
        "naive": datetime(2026, 1, 2, 3, 4, 5),
        "day": date(2026, 1, 2),
        "at": time(3, 4, 5),
        "id": uuid.UUID(int=7),
        "side": Side.BUY,
        "nan": float("nan"),
    }
    async with make_pg() as pg:
        got = await pg.fetchval("SELECT $1::jsonb", doc)
    assert got == {
        "aware": "2026-01-02T03:04:05.123456+00:00",
        "naive": "2026-01-02T03:04:05",
        "day": "2026-01-02",
        "at": "03:04:05",
        "id": "00000000-0000-0000-0000-000000000007",
        "side": "buy",
        "nan": None,  # orjson's (and the replaced client's) reading of NaN
    }
    assert datetime.fromisoformat(got["aware"]) == stamp


async def test_decimal_is_the_exact_json_number(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        assert await pg.fetchval("SELECT ($1::jsonb->>'p')", {"p": Decimal("27123.10")}) == "27123.10"
        assert await pg.fetchval("SELECT ($1::jsonb->'p')::numeric", {"p": Decimal("-1E+3")}) == Decimal("-1000")
        assert await pg.fetchval("SELECT jsonb_typeof($1::jsonb)", Decimal("0.1")) == "number"


async def test_what_neither_encodes_is_the_callers_data_error(make_pg: Callable[..., PostgresClient]) -> None:
    async with make_pg() as pg:
        for bad in ({"s": {1, 2}}, {"x": Decimal("NaN")}, {"b": b"bytes"}):
            with pytest.raises(asyncpg.DataError):
                await pg.fetchval("SELECT $1::jsonb", bad)


def test_codec_functions_without_a_server() -> None:
    assert codecs.dumps({"a": datetime(2026, 1, 1)}) == b'{"a":"2026-01-01T00:00:00"}'
    assert codecs.dumps(2**70) == b"1180591620717411303424"
    assert codecs.loads(b"1180591620717411303424") == 2**70  # orjson alone would read a float
    assert codecs.loads(b'{"k": [1, 2.5], "n": 1234567890123456789}') == {"k": [1, 2.5], "n": 1234567890123456789}
    with pytest.raises(TypeError):
        codecs.dumps(object())


async def test_copy_paths_encode_what_the_replaced_client_encoded(make_pg: Callable[..., PostgresClient]) -> None:
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    doc = {"at": stamp, "day": date(2026, 1, 2), "id": uuid.UUID(int=9), "px": Decimal("1.10"), "big": 2**70}
    expected = {
        "at": "2026-01-02T03:04:05+00:00",
        "day": "2026-01-02",
        "id": "00000000-0000-0000-0000-000000000009",
        "px": 1.1,
        "big": 2**70,
    }
    async with make_pg() as pg:
        await pg.execute("CREATE TABLE docs (id int PRIMARY KEY, j json, jb jsonb)")
        assert await pg.copy_upsert("docs", [(1, doc, doc)], columns=["id", "j", "jb"], key_columns=["id"]) == 1
        assert await pg.copy_records("docs", [(2, [doc], {"k": doc})], columns=["id", "j", "jb"]) == 1
        rows = await pg.fetch("SELECT id, j, jb FROM docs ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, expected, expected), (2, [expected], {"k": expected})]
        assert await pg.fetchval("SELECT jb->>'px' FROM docs WHERE id = 1") == "1.10"  # the exact number

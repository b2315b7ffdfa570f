"""The warehouse's hourly device statistics table: idempotent partition loads and MSSQL rendering.

Real databases only: a SQLite database in a temp file and the running PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (each test in its own fresh schema, dropped afterwards; skipped with a
visible reason when the variable is unset). MSSQL is covered by rendering its statements with the
pymssql dialect, as the warehouse would send them.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.schema import CreateTable

from datalog_platform.core import warehouse
from datalog_platform.core.warehouse import (
    STAT_COLUMNS,
    LoadResult,
    count_rows,
    count_statement,
    create_warehouse_schema,
    delete_statement,
    hourly_device_stats,
    load_hourly_stats,
    upsert_statement,
)
from datalog_platform_tests.support import ledger_helpers

DAY = "2026-11-01"
OTHER_DAY = "2026-11-02"
REGION = "BRCB"
OTHER_REGION = "KPXX"
FLOAT_STATS = tuple(c for c in STAT_COLUMNS if c not in ("dstrct_code", "readings"))


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """An empty warehouse: a temp-file SQLite database, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        eng = sa.create_engine(f"sqlite:///{tmp_path / 'warehouse.db'}")
        create_warehouse_schema(eng)
        yield eng
        eng.dispose()
    else:
        with ledger_helpers.postgres_schema(ledger_helpers.postgres_url()) as (eng, _schema):
            create_warehouse_schema(eng)
            yield eng


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def make_row(device_id: str, hh: int, seed: float, *, region: str = REGION, ymd: str = DAY) -> dict[str, Any]:
    """A row as a caller builds it (no updated_at); `seed` makes every stat distinct between loads."""
    row: dict[str, Any] = {"device_id": device_id, "ymd": ymd, "hh": hh, "dstrct_code": region}
    row["readings"] = int(seed * 10) + hh
    for n, name in enumerate(FLOAT_STATS):
        row[name] = seed + n / 8 + hh / 100 + 0.1 + 0.2  # 0.1 + 0.2 needs all 53 bits to come back exactly
    return row


def partition_rows(devices: list[str], hours: list[int], seed: float, **kw: Any) -> list[dict[str, Any]]:
    return [make_row(d, h, seed, **kw) for d in devices for h in hours]


def table_rows(engine: sa.Engine) -> dict[tuple[str, str, int], dict[str, Any]]:
    t = hourly_device_stats
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(t))]
    by_key = {(r["ymd"], r["device_id"], r["hh"]): r for r in rows}
    assert len(by_key) == len(rows), "primary key not unique"
    return by_key


def assert_holds(engine: sa.Engine, expected: list[dict[str, Any]], ymd: str = DAY, region: str = REGION) -> None:
    """The (ymd, region) partition holds exactly `expected`, every value equal."""
    got = {k: r for k, r in table_rows(engine).items() if r["ymd"] == ymd and r["dstrct_code"] == region}
    assert set(got) == {(r["ymd"], r["device_id"], r["hh"]) for r in expected}
    for row in expected:
        stored = got[(row["ymd"], row["device_id"], row["hh"])]
        assert {c: stored[c] for c in row} == row


# ---------------------------------------------------------------------------------------------
# Loads against real databases


def test_first_load_inserts_rows_and_reads_back_values(warehouse_engine: sa.Engine) -> None:
    create_warehouse_schema(warehouse_engine)  # a second call is harmless
    rows = partition_rows(["dev-a", "dev-b", "dev-c"], [0, 7, 23], 1.5)
    rows[0].update({name: None for name in FLOAT_STATS})  # an hour without sensor values
    rows[4]["humidity_avg"] = None
    before = utcnow() - timedelta(seconds=5)

    result = load_hourly_stats(warehouse_engine, DAY, REGION, rows)

    assert result == LoadResult(upserted=9, deleted=0, rows_in_table=9)
    assert count_rows(warehouse_engine, DAY, REGION) == 9
    assert_holds(warehouse_engine, rows)
    stored = table_rows(warehouse_engine)
    assert stored[(DAY, "dev-a", 0)]["temperature_min"] is None
    assert stored[(DAY, "dev-b", 7)]["humidity_avg"] is None
    assert stored[(DAY, "dev-b", 7)]["humidity_min"] == rows[4]["humidity_min"]
    stamps = {r["updated_at"] for r in stored.values()}
    assert len(stamps) == 1  # one timestamp for the whole load
    (stamp,) = stamps
    assert stamp.tzinfo is None and before <= stamp <= utcnow() + timedelta(seconds=5)


def test_reloading_a_partition_is_idempotent_and_keeps_the_last_values(warehouse_engine: sa.Engine) -> None:
    devices, hours = ["dev-a", "dev-b", "dev-c", "dev-d"], [3, 4, 5]
    first = partition_rows(devices, hours, 1.0)
    second = partition_rows(devices, hours, 2.0)
    third = partition_rows(devices, hours, 3.0)
    third[5].update({"temperature_max": None, "readings": 0})
    n = len(first)

    results = [load_hourly_stats(warehouse_engine, DAY, REGION, rows) for rows in (first, second, third)]

    assert results == [LoadResult(upserted=n, deleted=0, rows_in_table=n)] * 3
    assert count_rows(warehouse_engine, DAY, REGION) == n
    assert len(table_rows(warehouse_engine)) == n  # asserts key uniqueness too
    assert_holds(warehouse_engine, third)


def test_reload_with_fewer_rows_deletes_only_the_stale_rows(warehouse_engine: sa.Engine) -> None:
    devices, hours = ["dev-a", "dev-b", "dev-c"], [10, 11, 12]
    load_hourly_stats(warehouse_engine, DAY, REGION, partition_rows(devices, hours, 1.0))
    other_day = partition_rows(devices, hours, 5.0, ymd=OTHER_DAY)
    other_region = partition_rows(devices, hours, 6.0, region=OTHER_REGION)  # same devices: not the same rows
    load_hourly_stats(warehouse_engine, OTHER_DAY, REGION, other_day)
    other_region = [dict(r, device_id=f"x-{r['device_id']}") for r in other_region]
    load_hourly_stats(warehouse_engine, DAY, OTHER_REGION, other_region)

    # dev-c's data was removed by a rebuild and hour 12 is gone: 3 + 2 rows are stale.
    rebuilt = partition_rows(["dev-a", "dev-b"], [10, 11], 2.0)
    result = load_hourly_stats(warehouse_engine, DAY, REGION, rebuilt)

    assert result == LoadResult(upserted=4, deleted=5, rows_in_table=4)
    assert_holds(warehouse_engine, rebuilt)
    assert_holds(warehouse_engine, other_day, ymd=OTHER_DAY)
    assert_holds(warehouse_engine, other_region, region=OTHER_REGION)
    assert count_rows(warehouse_engine, OTHER_DAY, REGION) == 9
    assert count_rows(warehouse_engine, DAY, OTHER_REGION) == 9
    assert len(table_rows(warehouse_engine)) == 4 + 9 + 9


def test_more_than_one_chunk_of_stale_rows_is_deleted(warehouse_engine: sa.Engine) -> None:
    assert warehouse.DELETE_CHUNK <= 500
    rows = partition_rows([f"dev-{n:03d}" for n in range(50)], list(range(24)), 1.0)  # 1,200 rows
    neighbour = partition_rows(["dev-000", "dev-001"], [0, 1], 9.0, ymd=OTHER_DAY)
    load_hourly_stats(warehouse_engine, OTHER_DAY, REGION, neighbour)
    assert load_hourly_stats(warehouse_engine, DAY, REGION, rows) == LoadResult(
        upserted=1200, deleted=0, rows_in_table=1200
    )

    # Keep a few rows spread over the key order so the stale ones fall into several chunks with gaps.
    kept = rows[::300]
    assert load_hourly_stats(warehouse_engine, DAY, REGION, kept) == LoadResult(
        upserted=len(kept), deleted=1200 - len(kept), rows_in_table=len(kept)
    )
    assert_holds(warehouse_engine, kept)

    assert load_hourly_stats(warehouse_engine, DAY, REGION, []) == LoadResult(
        upserted=0, deleted=len(kept), rows_in_table=0
    )
    assert count_rows(warehouse_engine, DAY, REGION) == 0
    assert_holds(warehouse_engine, neighbour, ymd=OTHER_DAY)


def test_failed_load_leaves_the_partition_unchanged(warehouse_engine: sa.Engine) -> None:
    rows = partition_rows(["dev-a", "dev-b"], [1, 2], 1.0)
    load_hourly_stats(warehouse_engine, DAY, REGION, rows)
    # The first row would upsert and dev-b would be deleted, but readings is NOT NULL: all rolls back.
    bad = [make_row("dev-a", 1, 7.0), dict(make_row("dev-a", 2, 7.0), readings=None)]

    with pytest.raises(sa.exc.IntegrityError):
        load_hourly_stats(warehouse_engine, DAY, REGION, bad)

    assert_holds(warehouse_engine, rows)


def test_rows_of_another_partition_are_refused(warehouse_engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="not the partition"):
        load_hourly_stats(warehouse_engine, DAY, REGION, [make_row("dev-a", 1, 1.0, region=OTHER_REGION)])
    with pytest.raises(ValueError, match="repeat"):
        load_hourly_stats(warehouse_engine, DAY, REGION, [make_row("dev-a", 1, 1.0), make_row("dev-a", 1, 2.0)])
    assert count_rows(warehouse_engine, DAY, REGION) == 0


# ---------------------------------------------------------------------------------------------
# Statements


def pymssql_dialect() -> sa.Dialect:
    """The dialect (and paramstyle) the warehouse uses on MSSQL; creating the warehouse_engine does not connect."""
    return sa.create_engine("mssql+pymssql://user:pw@127.0.0.1/warehouse").dialect


def test_mssql_upsert_is_a_merge_with_bind_params() -> None:
    dialect = pymssql_dialect()
    compiled = upsert_statement("mssql").compile(dialect=dialect)
    sql = " ".join(str(compiled).split())
    names = [c.name for c in hourly_device_stats.columns]
    values = [c for c in names if c not in ("device_id", "ymd", "hh")]

    assert sql.startswith("MERGE INTO hourly_device_stats WITH (HOLDLOCK) AS t USING (SELECT ")
    assert sql.endswith(";")
    assert "ON t.device_id = s.device_id AND t.ymd = s.ymd AND t.hh = s.hh WHEN MATCHED THEN UPDATE SET " in sql
    assert "WHEN NOT MATCHED THEN INSERT (" in sql
    for name in names:
        assert f"%({name})s AS {name}" in sql
    update = sql.split("UPDATE SET ", 1)[1].split(" WHEN NOT MATCHED", 1)[0]
    assert update == ", ".join(f"{c} = s.{c}" for c in values)
    assert values == [*STAT_COLUMNS, "updated_at"]
    assert f"INSERT ({', '.join(names)}) VALUES ({', '.join(f's.{c}' for c in names)});" in sql
    assert {k: type(v.type) for k, v in compiled.binds.items()} == {c.name: type(c.type) for c in hourly_device_stats.c}

    # The values arrive only as parameters.
    row = dict(make_row("dev-'; DROP TABLE x;--", 13, 4.25, ymd="2031-07-19"), updated_at=datetime(2031, 7, 19))
    params = compiled.construct_params(row)
    assert params["device_id"] == row["device_id"] and params["hh"] == 13
    for value in ("dev-'; DROP TABLE x;--", "2031-07-19", "BRCB", str(row["temperature_min"])):
        assert value not in sql


def test_mssql_delete_and_count_use_bind_params() -> None:
    dialect = pymssql_dialect()
    stale = [("dev-'odd'", 17), ("dev-zz", 21)]
    delete = delete_statement("2031-07-19", "QQRG", stale).compile(dialect=dialect)
    count = count_statement("2031-07-19", "QQRG").compile(dialect=dialect)

    for compiled in (delete, count):
        sql = str(compiled)
        for value in ("2031-07-19", "QQRG", "dev-'odd'", "dev-zz", "17", "21"):
            assert value not in sql
        assert "%(ymd_1)s" in sql and "%(dstrct_code_1)s" in sql
    assert str(delete).startswith("DELETE FROM hourly_device_stats WHERE ")
    assert str(delete).count("%(device_id_") == 2 and str(delete).count("%(hh_") == 2
    assert set(delete.params.values()) == {"2031-07-19", "QQRG", "dev-'odd'", "dev-zz", 17, 21}
    # One full chunk stays under MSSQL's 2,100 parameters.
    full = [(f"d{n}", n % 24) for n in range(warehouse.DELETE_CHUNK)]
    assert len(delete_statement(DAY, REGION, full).compile(dialect=dialect).params) < 2100


def test_mssql_table_uses_float53_and_composite_key() -> None:
    ddl = " ".join(str(CreateTable(hourly_device_stats).compile(dialect=pymssql_dialect())).split())
    assert ddl.count("FLOAT(53)") == len(FLOAT_STATS)
    assert "PRIMARY KEY (device_id, ymd, hh)" in ddl
    assert "updated_at DATETIME NOT NULL" in ddl
    index = next(iter(hourly_device_stats.indexes))
    assert [c.name for c in index.columns] == ["ymd", "dstrct_code"]


@pytest.mark.parametrize("dialect_name", ["postgresql", "sqlite"])
def test_on_conflict_upsert_updates_every_value_column(dialect_name: str) -> None:
    dialect = {"postgresql": postgresql.dialect(), "sqlite": sqlite.dialect()}[dialect_name]
    sql = " ".join(str(upsert_statement(dialect_name).compile(dialect=dialect)).split())
    set_clause = ", ".join(f"{c} = excluded.{c}" for c in [*STAT_COLUMNS, "updated_at"])
    assert sql.endswith(f"ON CONFLICT (device_id, ymd, hh) DO UPDATE SET {set_clause}")


def test_unknown_dialect_raises() -> None:
    with pytest.raises(ValueError, match="oracle"):
        upsert_statement("oracle")

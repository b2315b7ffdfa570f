"""The SQL warehouse's hourly device statistics table and its idempotent load (SQLAlchemy Core).

`hourly_device_stats` holds one row per device, local date and local hour. `load_hourly_stats`
replaces one (local date, region) partition in a single transaction: it upserts the new rows and
deletes the rows an earlier materialization left behind. MSSQL, PostgreSQL and SQLite are supported;
the warehouse has its own metadata because it may live in a different database from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from datalog_platform.core.ledger.engine import chunks

metadata = sa.MetaData()

hourly_device_stats = sa.Table(
    "hourly_device_stats",
    metadata,
    sa.Column("device_id", sa.String(255), primary_key=True),
    sa.Column("ymd", sa.String(10), primary_key=True),  # local date, 'YYYY-MM-DD'
    sa.Column("hh", sa.SmallInteger, primary_key=True, autoincrement=False),  # local hour, 0..23
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    sa.Column("readings", sa.BigInteger, nullable=False),
    sa.Column("temperature_min", sa.Float(53)),
    sa.Column("temperature_max", sa.Float(53)),
    sa.Column("temperature_avg", sa.Float(53)),
    sa.Column("humidity_min", sa.Float(53)),
    sa.Column("humidity_max", sa.Float(53)),
    sa.Column("humidity_avg", sa.Float(53)),
    sa.Column("pcv_temperature_min", sa.Float(53)),
    sa.Column("pcv_temperature_max", sa.Float(53)),
    sa.Column("pcv_temperature_avg", sa.Float(53)),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Index("ix_hourly_device_stats_ymd_dstrct_code", "ymd", "dstrct_code"),
)

KEY_COLUMNS: tuple[str, ...] = tuple(c.name for c in hourly_device_stats.primary_key.columns)
STAT_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in hourly_device_stats.columns if not c.primary_key and c.name != "updated_at"
)
# Everything an upsert writes when the key already exists.
_VALUE_COLUMNS: tuple[str, ...] = (*STAT_COLUMNS, "updated_at")

# Two bind parameters per stale key plus ymd and region: 1,002 parameters, well under MSSQL's 2,100.
DELETE_CHUNK = 500


@dataclass(frozen=True)
class LoadResult:
    upserted: int
    deleted: int
    rows_in_table: int


def create_warehouse_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine)  # checks first: existing tables are left alone


def _mssql_merge() -> sa.TextClause:
    t = hourly_device_stats
    names = [c.name for c in t.columns]
    source = ", ".join(f":{n} AS {n}" for n in names)
    on = " AND ".join(f"t.{n} = s.{n}" for n in KEY_COLUMNS)
    update = ", ".join(f"{n} = s.{n}" for n in _VALUE_COLUMNS)
    sql = (
        f"MERGE INTO {t.name} WITH (HOLDLOCK) AS t "
        f"USING (SELECT {source}) AS s "
        f"ON {on} "
        f"WHEN MATCHED THEN UPDATE SET {update} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) VALUES ({', '.join(f's.{n}' for n in names)});"
    )
    return sa.text(sql).bindparams(*(sa.bindparam(c.name, type_=c.type) for c in t.columns))


def upsert_statement(dialect_name: str) -> sa.Executable:
    """An insert-or-update of one row by (device_id, ymd, hh), for executemany with one dict per row."""
    t = hourly_device_stats
    if dialect_name == "mssql":
        return _mssql_merge()
    if dialect_name == "postgresql":
        stmt = postgresql.insert(t)
    elif dialect_name == "sqlite":
        stmt = sqlite.insert(t)
    else:
        raise ValueError(f"unsupported warehouse dialect: {dialect_name!r} (expected mssql, postgresql or sqlite)")
    return stmt.on_conflict_do_update(
        index_elements=[t.c[n] for n in KEY_COLUMNS],
        set_={n: stmt.excluded[n] for n in _VALUE_COLUMNS},
    )


def _in_partition(ymd: str, region: str) -> sa.ColumnElement[bool]:
    t = hourly_device_stats
    return sa.and_(t.c.ymd == ymd, t.c.dstrct_code == region)


def partition_keys_statement(ymd: str, region: str) -> sa.Select[Any]:
    t = hourly_device_stats
    return sa.select(t.c.device_id, t.c.hh).where(_in_partition(ymd, region))


def delete_statement(ymd: str, region: str, stale: list[tuple[str, int]]) -> sa.Delete:
    """Deletes the given (device_id, hh) rows of one partition; callers pass at most DELETE_CHUNK keys.

    An OR of ANDs rather than a tuple IN, which MSSQL does not have.
    """
    t = hourly_device_stats
    keys = sa.or_(*(sa.and_(t.c.device_id == device_id, t.c.hh == hh) for device_id, hh in stale))
    return sa.delete(t).where(_in_partition(ymd, region), keys)


def count_statement(ymd: str, region: str) -> sa.Select[Any]:
    return sa.select(sa.func.count()).select_from(hourly_device_stats).where(_in_partition(ymd, region))


def count_rows(engine: sa.Engine, ymd: str, region: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(count_statement(ymd, region)).scalar_one())


def _params(row: Mapping[str, Any], ymd: str, region: str, now: datetime) -> dict[str, Any]:
    params = {"ymd": ymd, "dstrct_code": region, **row, "updated_at": now}
    if params["ymd"] != ymd or params["dstrct_code"] != region:
        raise ValueError(
            f"row {row.get('device_id')!r} hour {row.get('hh')!r} belongs to ({params['ymd']}, "
            f"{params['dstrct_code']}), not the partition being loaded ({ymd}, {region})"
        )
    missing = [c.name for c in hourly_device_stats.columns if c.name not in params]
    if missing:
        raise ValueError(f"row {row.get('device_id')!r} hour {row.get('hh')!r} lacks {', '.join(missing)}")
    return {c.name: params[c.name] for c in hourly_device_stats.columns}


def load_hourly_stats(engine: sa.Engine, ymd: str, region: str, rows: list[dict[str, Any]]) -> LoadResult:
    """Make the (ymd, region) partition hold exactly `rows`, in one transaction.

    Rows carry device_id, hh and the STAT_COLUMNS (ymd and dstrct_code may be left out; if present
    they must match the partition); updated_at is set here, the same UTC time for every row. Rows of
    the partition that are not among `rows` are deleted, so an empty list empties the partition.
    """
    now = datetime.now(UTC).replace(tzinfo=None)
    params = [_params(row, ymd, region, now) for row in rows]
    new_keys = {(str(p["device_id"]), int(p["hh"])) for p in params}
    if len(new_keys) != len(params):
        # PostgreSQL refuses to update one row twice in one statement; a duplicate is a caller bug anyway.
        raise ValueError(f"rows for ({ymd}, {region}) repeat a (device_id, hh) key")
    deleted = 0
    with engine.begin() as conn:
        if params:
            conn.execute(upsert_statement(conn.dialect.name), params)
        existing = {(device_id, hh) for device_id, hh in conn.execute(partition_keys_statement(ymd, region))}
        stale = sorted(existing - new_keys)
        for chunk in chunks(stale, DELETE_CHUNK):
            deleted += conn.execute(delete_statement(ymd, region, chunk)).rowcount
        rows_in_table = int(conn.execute(count_statement(ymd, region)).scalar_one())
    return LoadResult(upserted=len(params), deleted=deleted, rows_in_table=rows_in_table)

"""Datasets computed from the lake: hourly device statistics and temperature anomalies.

Each is a hive dataset of its own (`{LAKE}/{dataset}/hiveperiod=D/dstrct_code=R/`), computed from
the LIVE files of `datalog_v2` and written like a rebuild: the new files first, then one ledger
commit makes them LIVE and retires the partition's previous ones, which are deleted after. A
re-materialization replaces the partition; a reader of the manifest sees one or the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import duckdb
import sqlalchemy as sa

from datalog_platform.core.lake import device_sql, live_columns, read_live
from datalog_platform.core.ledger import holds, protocol
from datalog_platform.core.ledger.records import DATASET, INGEST_DATASETS
from datalog_platform.core.ledger.schema import COMMITTED, DERIVE, INGEST, LIVE, REBUILD, batches, lake_files
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.write import copy_to_lake

HOURLY_STATS = "hourly_device_stats"
ANOMALIES = "device_anomalies"
MEASURES = ("temperature", "humidity", "pcv_temperature")
# Scales the MAD to the standard deviation of a normal distribution (Iglewicz and Hoaglin).
MAD_SCALE = 0.6745


@dataclass(frozen=True)
class Written:
    batch_id: str
    rows: int
    files: list[protocol.LakeFile]
    replaced: int


def _values(columns: set[str], names: tuple[str, ...]) -> str:
    """Each measure as DOUBLE, NULL where the partition's files have no such column."""
    return ", ".join(f"TRY_CAST({n} AS DOUBLE) AS {n}" if n in columns else f"NULL::DOUBLE AS {n}" for n in names)


def stage_readings(conn: duckdb.DuckDBPyConnection, engine: sa.Engine, lake: ObjectStore, day: str, region: str) -> int:
    """Table `_dl_readings` (device_id, datetime_wita and the measures as DOUBLE) from the LIVE
    files of one partition; returns its rows."""
    columns = live_columns(conn, engine, lake, DATASET, day, region)
    if columns:
        select = f"SELECT {device_sql(columns)} AS device_id, datetime_wita, {_values(columns, MEASURES)} FROM live"
        read_live(conn, engine, lake, DATASET, f"CREATE OR REPLACE TEMP TABLE _dl_readings AS {select}", day, region)
    else:
        measures = ", ".join(f"{m} DOUBLE" for m in MEASURES)
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE _dl_readings (device_id VARCHAR, datetime_wita TIMESTAMP, {measures})"
        )
    return conn.execute("SELECT count(*) FROM _dl_readings").fetchone()[0]


def hourly_stats_sql() -> str:
    """Per device and local hour of `_dl_readings`: readings, and min / max / avg of each measure."""
    stats = ", ".join(f"min({m}) AS {m}_min, max({m}) AS {m}_max, avg({m}) AS {m}_avg" for m in MEASURES)
    return f"""SELECT device_id, strftime(datetime_wita, '%Y-%m-%d') AS ymd, hour(datetime_wita)::SMALLINT AS hh,
            count(*) AS readings, {stats}
        FROM _dl_readings GROUP BY device_id, ymd, hh"""


def anomalies_statements() -> list[str]:
    """Temperature readings of `_dl_readings` whose robust z-score, 0.6745 (x - median) / MAD per
    device, exceeds `$threshold` in absolute value (table `_dl_anomalies`), and the devices that
    cannot be scored (table `_dl_unscored`): fewer than `$min_readings` readings, or a MAD of 0
    (at least half the readings equal the median, as a constant sender's do)."""
    return [
        """CREATE OR REPLACE TEMP TABLE _dl_device_center AS
            WITH r AS (SELECT device_id, temperature FROM _dl_readings WHERE temperature IS NOT NULL),
                 c AS (SELECT device_id, count(*) AS readings, median(temperature) AS median FROM r GROUP BY ALL)
            SELECT c.device_id, c.readings, c.median, median(abs(r.temperature - c.median)) AS mad
            FROM c JOIN r USING (device_id) GROUP BY ALL""",
        """CREATE OR REPLACE TEMP TABLE _dl_unscored AS
            SELECT device_id, readings, median, mad,
                CASE WHEN readings < $min_readings THEN 'too_few_readings' ELSE 'constant_value' END AS reason
            FROM _dl_device_center WHERE readings < $min_readings OR mad = 0 ORDER BY device_id""",
        f"""CREATE OR REPLACE TEMP TABLE _dl_anomalies AS
            SELECT * FROM (
                SELECT r.device_id, r.datetime_wita, r.temperature, c.median, c.mad,
                    {MAD_SCALE} * (r.temperature - c.median) / c.mad AS robust_z,
                    $threshold::DOUBLE AS threshold
                FROM _dl_readings r JOIN _dl_device_center c USING (device_id)
                WHERE r.temperature IS NOT NULL AND c.readings >= $min_readings AND c.mad > 0)
            WHERE abs(robust_z) > threshold ORDER BY device_id, datetime_wita""",
    ]


def find_anomalies(conn: duckdb.DuckDBPyConnection, threshold: float, min_readings: int) -> None:
    for statement in anomalies_statements():
        params = {
            k: v for k, v in {"threshold": threshold, "min_readings": min_readings}.items() if f"${k}" in statement
        }
        conn.execute(statement, params)


def replace_partition(
    conn: duckdb.DuckDBPyConnection,
    engine: sa.Engine,
    lake: ObjectStore,
    dataset: str,
    table: str,
    day: str,
    region: str,
    run_id: str | None,
    lease_seconds: int,
    max_attempts: int,
) -> Written:
    """Make the rows of DuckDB table `table` the partition (day, region) of `dataset`."""
    where = (
        lake_files.c.dataset == dataset,
        lake_files.c.hiveperiod == day,
        lake_files.c.dstrct_code == region,
    )
    with engine.connect() as sql, sql.begin():
        batch_id = protocol.insert_batch(sql, DERIVE, day, region, run_id, lease_seconds)
        holds.hold_files(sql, batch_id, f"{dataset} {day} / {region}", *where)
    try:
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        files: list[protocol.LakeFile] = []
        if rows:
            protocol.record_intent(engine, batch_id, [f"{dataset}/hiveperiod={day}/dstrct_code={region}"])
            select = f"SELECT *, $day::VARCHAR AS hiveperiod, $region::VARCHAR AS dstrct_code FROM {table}"
            files = copy_to_lake(conn, lake, select, {"day": day, "region": region}, dataset, batch_id, rows)
        protocol.commit_batch(engine, batch_id, [], files, rows, 0)
    except Exception as exc:
        protocol.abort_batch(engine, lake, batch_id, f"{type(exc).__name__}: {exc}", max_attempts)
        raise
    replaced = protocol.delete_retired(engine, lake, batch_id)
    return Written(batch_id, int(rows), files, replaced)


@dataclass(frozen=True)
class StalePartition:
    day: str
    region: str
    changed_at: datetime  # the last commit of an ingest or rebuild that wrote rows of the day


def stale_partitions(engine: sa.Engine, before: str) -> list[StalePartition]:
    """The dates (before `before`) and regions whose analytics were computed before their rows last
    changed: an ingest or a rebuild (new keys, late keys, a new version of a key) committed files
    into the day's directories after the last derive of that partition. A compaction rewrites
    files without changing rows and does not count."""
    built = (
        sa.select(batches.c.part_date, batches.c.dstrct_code, sa.func.max(batches.c.committed_at).label("at"))
        .where(batches.c.kind == DERIVE, batches.c.status == COMMITTED)
        .group_by(batches.c.part_date, batches.c.dstrct_code)
        .subquery()
    )
    written = (
        sa.select(lake_files.c.hiveperiod, lake_files.c.dstrct_code, sa.func.max(lake_files.c.committed_at).label("at"))
        .join(batches, batches.c.batch_id == lake_files.c.batch_id)
        .where(
            lake_files.c.dataset.in_(INGEST_DATASETS),
            lake_files.c.state == LIVE,
            lake_files.c.hiveperiod < before,
            sa.or_(batches.c.kind.in_((INGEST, REBUILD)), batches.c.kind.is_(None)),
        )
        .group_by(lake_files.c.hiveperiod, lake_files.c.dstrct_code)
        .subquery()
    )
    stmt = (
        sa.select(written.c.hiveperiod, written.c.dstrct_code, written.c.at)
        .join(built, sa.and_(built.c.part_date == written.c.hiveperiod, built.c.dstrct_code == written.c.dstrct_code))
        .where(written.c.at > built.c.at)
        .order_by(written.c.hiveperiod, written.c.dstrct_code)
    )
    with engine.connect() as conn:
        return [StalePartition(day, region, at) for day, region, at in conn.execute(stmt).all()]

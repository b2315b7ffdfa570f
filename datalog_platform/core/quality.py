"""What is known of one (date, region) partition's quality, from the ledger and from the lake.

The ledger says what each committed key wrote (rows, quarantined lines, duplicates dropped); the
lake's LIVE files say what is there. The checks on `datalog_parquet` and the quality report read
the same `PartitionQuality`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import sqlalchemy as sa

from datalog_platform.core.lake import device_sql, live_columns, read_live
from datalog_platform.core.ledger.fields import SchemaChange, schema_changes
from datalog_platform.core.ledger.records import DATASET, QUARANTINE
from datalog_platform.core.ledger.schema import (
    ABORTING,
    LIVE,
    QUARANTINED,
    SUCCESS,
    WRITING,
    batches,
    keys,
    lake_files,
)
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.shape import RECORD_HASH, RESCUED

_INGESTED = (SUCCESS, QUARANTINED)


@dataclass(frozen=True)
class LedgerCounts:
    """The keys of a source partition: by status, and what the ingested ones wrote."""

    by_status: dict[str, int]
    rows: int
    quarantined_lines: int
    duplicate_rows: int


@dataclass(frozen=True)
class DirectoryCounts:
    """The rows of one hive directory's LIVE files."""

    rows: int = 0
    duplicate_rows: int = 0  # copies beyond the first of a record (same instant and hash)
    conflicts: int = 0  # (device, instant) pairs with more than one payload
    conflict_rows: int = 0
    rescued_rows: int = 0
    rescued_by_field: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PartitionQuality:
    day: str
    region: str
    ledger: LedgerCounts
    lake_rows: int  # data rows from the partition's keys, counted in their LIVE files
    lake_quarantined: int
    quarantine_reasons: dict[str, int]
    directory: DirectoryCounts
    orphan_files: list[str]
    missing_files: list[str]
    schema_changes: list[SchemaChange]
    lake_error: str | None = None  # the LIVE files could not be read; the lake counts are 0

    @property
    def lines(self) -> int:
        """Lines of the ingested keys: written, quarantined or dropped as duplicates."""
        return self.ledger.rows + self.ledger.quarantined_lines + self.ledger.duplicate_rows

    @property
    def quarantine_rate(self) -> float:
        seen = self.ledger.rows + self.ledger.quarantined_lines
        return self.ledger.quarantined_lines / seen if seen else 0.0

    @property
    def duplicate_rate(self) -> float:
        return self.ledger.duplicate_rows / self.lines if self.lines else 0.0

    @property
    def quality_score(self) -> float:
        """Percent of the partition's records that arrived valid and unambiguous: not quarantined,
        no value rescued, no conflicting copy. 100 for a partition without records."""
        seen = self.ledger.rows + self.ledger.quarantined_lines
        clean = self.ledger.rows - self.directory.rescued_rows - self.directory.conflict_rows
        return round(100.0 * max(clean, 0) / seen, 2) if seen else 100.0


def ledger_counts(engine: sa.Engine, day: str, region: str) -> LedgerCounts:
    k = keys.c
    ingested = sa.or_(k.status.in_(_INGESTED), k.prior_status.in_(_INGESTED))
    with engine.connect() as conn:
        by_status = dict(
            conn.execute(
                sa.select(k.status, sa.func.count())
                .where(k.part_date == day, k.dstrct_code == region)
                .group_by(k.status)
            ).all()
        )
        rows, quarantined, duplicates = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(k.rows), 0),
                sa.func.coalesce(sa.func.sum(k.quarantined_lines), 0),
                sa.func.coalesce(sa.func.sum(k.duplicate_rows), 0),
            ).where(k.part_date == day, k.dstrct_code == region, ingested)
        ).one()
    return LedgerCounts({s: int(n) for s, n in by_status.items()}, int(rows), int(quarantined), int(duplicates))


def file_problems(
    engine: sa.Engine, lake: ObjectStore, dataset: str, day: str, region: str
) -> tuple[list[str], list[str]]:
    """(orphans, missing) of one hive directory: Parquet files no batch recorded (and no batch
    still writing may own), and LIVE files of the manifest that the store does not have."""
    directory = f"{dataset}/hiveperiod={day}/dstrct_code={region}/"
    stored = {o.key for o in lake.list(directory) if o.key.endswith(".parquet")}
    with engine.connect() as conn:
        recorded = dict(
            conn.execute(
                sa.select(lake_files.c.path, lake_files.c.state).where(
                    lake_files.c.dataset == dataset, lake_files.c.hiveperiod == day, lake_files.c.dstrct_code == region
                )
            )
            .tuples()
            .all()
        )
        writing = conn.execute(
            sa.select(batches.c.batch_id).where(
                batches.c.status.in_((WRITING, ABORTING)), batches.c.dstrct_code == region
            )
        ).scalars()
        in_flight = tuple(f"{directory}part-{batch_id}-" for batch_id in writing)
    orphans = sorted(p for p in stored - set(recorded) if not p.startswith(in_flight))
    missing = sorted(p for p, state in recorded.items() if state == LIVE and p not in stored)
    return orphans, missing


def directory_counts(
    conn: duckdb.DuckDBPyConnection, engine: sa.Engine, lake: ObjectStore, day: str, region: str
) -> DirectoryCounts:
    columns = live_columns(conn, engine, lake, DATASET, day, region)
    if not columns:
        return DirectoryCounts()
    if RECORD_HASH not in columns:  # files written before records were hashed
        ((rows,),) = read_live(conn, engine, lake, DATASET, "SELECT count(*) FROM live", day, region)
        return DirectoryCounts(rows=int(rows))
    ((rows, distinct, hashed, conflicts, conflict_rows),) = read_live(
        conn,
        engine,
        lake,
        DATASET,
        f"""WITH records AS (
                SELECT {device_sql(columns)} AS device, datetime_wita, {RECORD_HASH} AS h FROM live),
            pairs AS (
                SELECT count(DISTINCT h) AS payloads, count(*) AS n FROM records
                WHERE h IS NOT NULL GROUP BY device, datetime_wita)
            SELECT (SELECT count(*) FROM records),
                   (SELECT count(*) FROM (SELECT DISTINCT datetime_wita, h FROM records WHERE h IS NOT NULL)),
                   (SELECT count(*) FROM records WHERE h IS NOT NULL),
                   (SELECT count(*) FROM pairs WHERE payloads > 1),
                   (SELECT coalesce(sum(n), 0) FROM pairs WHERE payloads > 1)""",
        day,
        region,
    )
    rescued: dict[str, int] = {}
    if RESCUED in columns:
        rescued = dict(
            read_live(
                conn,
                engine,
                lake,
                DATASET,
                f"""SELECT field, count(*) FROM (
                    SELECT unnest(json_keys({RESCUED})) AS field FROM live WHERE {RESCUED} IS NOT NULL)
                GROUP BY ALL ORDER BY ALL""",
                day,
                region,
            )
        )
    rescued_rows = 0
    if rescued:
        ((rescued_rows,),) = read_live(
            conn, engine, lake, DATASET, f"SELECT count(*) FROM live WHERE {RESCUED} IS NOT NULL", day, region
        )
    return DirectoryCounts(
        rows=int(rows),
        duplicate_rows=int(hashed) - int(distinct),
        conflicts=int(conflicts),
        conflict_rows=int(conflict_rows),
        rescued_rows=int(rescued_rows),
        rescued_by_field={f: int(n) for f, n in rescued.items()},
    )


def measure(
    conn: duckdb.DuckDBPyConnection, engine: sa.Engine, lake: ObjectStore, day: str, region: str
) -> PartitionQuality:
    orphans, missing = [], []
    for dataset in (DATASET, QUARANTINE):
        o, m = file_problems(engine, lake, dataset, day, region)
        orphans += o
        missing += m
    lake_rows, reasons, directory, error = 0, {}, DirectoryCounts(), None
    try:
        ((lake_rows,),) = read_live(
            conn, engine, lake, DATASET, "SELECT count(*) FROM live", part_date=day, region=region
        ) or [(0,)]
        reasons = dict(
            read_live(
                conn,
                engine,
                lake,
                QUARANTINE,
                "SELECT reason, count(*) FROM live GROUP BY ALL ORDER BY ALL",
                part_date=day,
                region=region,
            )
        )
        directory = directory_counts(conn, engine, lake, day, region)
    except (duckdb.IOException, duckdb.HTTPException) as exc:
        error = f"{type(exc).__name__}: {exc}"  # a LIVE file is gone or unreadable
    return PartitionQuality(
        day=day,
        region=region,
        ledger=ledger_counts(engine, day, region),
        lake_rows=int(lake_rows),
        lake_quarantined=sum(int(n) for n in reasons.values()),
        quarantine_reasons={r: int(n) for r, n in reasons.items()},
        directory=directory,
        lake_error=error,
        orphan_files=orphans,
        missing_files=missing,
        schema_changes=schema_changes(engine, DATASET, day, region),
    )

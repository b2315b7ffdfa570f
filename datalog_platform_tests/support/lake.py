"""The lake read back: rows of the dataset, (source_file, seq) ids, hive partition directories,
the files one batch wrote, and file listings to compare before and after a run.

Real parts only: DuckDB reading the Parquet files (httpfs against moto's S3 server when the lake is
on S3), local directories and the platform's S3Store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb

from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.ledger.records import DATASET
from datalog_platform.core.store import S3Access, S3Store
from datalog_platform_tests.support.raw_data import RowId


def lake_rows(lake_uri: str, access: S3Access | None = None) -> list[dict[str, Any]]:
    """Every row of the lake's dataset (hive columns included), read with DuckDB."""
    conn = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    try:
        if access is not None:
            enable_s3(conn, access)
        cursor = conn.execute(
            "SELECT * FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
            [f"{lake_uri.rstrip('/')}/{DATASET}/**/*.parquet"],
        )
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
    finally:
        conn.close()


def row_ids(rows: Iterable[Mapping[str, Any]]) -> list[RowId]:
    """(source_file, seq) of each lake row, as a list so duplicates stay visible."""
    return sorted((str(r["source_file"]), int(r["seq"])) for r in rows)


def local_files(root: Path) -> dict[str, int]:
    """Every file under `root` (relative path -> mtime in ns); {} if `root` does not exist."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def s3_lake_keys(store: S3Store) -> dict[str, str | None]:
    """Every object of an S3 store (key -> etag)."""
    return {o.key: o.etag for o in store.list()}


def partition_dir(lake: Path, part_date: str, region: str, dataset: str = "datalog_v2") -> Path:
    return lake / dataset / f"hiveperiod={part_date}" / f"dstrct_code={region}"


def partition_row_ids(lake: Path, part_date: str, region: str) -> list[RowId]:
    """(source_file, seq) of every row in one hive partition of the lake, duplicates kept, sorted.

    Reads one partition only, so that files other runs are writing elsewhere are never opened.
    """
    directory = partition_dir(lake, part_date, region)
    if not any(directory.glob("*.parquet")):
        return []
    conn = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    try:
        rows = conn.execute(
            "SELECT source_file, seq FROM read_parquet(?, hive_partitioning = true, union_by_name = true)",
            [f"{directory}/*.parquet"],
        ).fetchall()
    finally:
        conn.close()
    return sorted((str(f), int(s)) for f, s in rows)


def batch_files(lake: Path, batch_id: str) -> list[str]:
    """Every lake file a batch wrote (`part-{batch_id}-*`), as paths relative to the lake."""
    return sorted(p.relative_to(lake).as_posix() for p in lake.rglob(f"part-{batch_id}-*"))

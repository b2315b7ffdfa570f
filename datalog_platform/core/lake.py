"""Reading the lake through the ledger's manifest: the LIVE files, never a half-swapped partition.

A reader that globs `hiveperiod=*/dstrct_code=*/*.parquet` sees the files as they are on the
store: while a rebuild or compaction swaps a partition it can see the new files next to the old
ones for a moment. Reading the manifest's LIVE files instead gives one committed state; if a file
of that state is deleted by a swap while the query runs, the query is repeated on the new state.
"""

from __future__ import annotations

from typing import Any

import duckdb
import sqlalchemy as sa

from datalog_platform.core.ledger.swap import live_files
from datalog_platform.core.store import ObjectStore

LIVE_VIEW = "live"


def read_live(
    conn: duckdb.DuckDBPyConnection,
    engine: sa.Engine,
    lake: ObjectStore,
    dataset: str,
    sql: str,
    hiveperiod: str | None = None,
    region: str | None = None,
    attempts: int = 5,
    part_date: str | None = None,
) -> list[tuple[Any, ...]]:
    """Run `sql` over the temp view `live`: the dataset's LIVE files (of one date and region, and
    from one source partition's keys, if given) with their hive columns. [] when there are no
    such files."""
    for attempt in range(1, attempts + 1):
        files = [lake.uri(f.path) for f in live_files(engine, dataset, hiveperiod, region, part_date)]
        if not files:
            return []
        conn.execute("SET VARIABLE dl_live_files = $files", {"files": files})
        try:
            conn.execute(
                f"CREATE OR REPLACE TEMP VIEW {LIVE_VIEW} AS SELECT * FROM read_parquet("
                "getvariable('dl_live_files'), hive_partitioning = true, union_by_name = true)"
            )
            return conn.execute(sql).fetchall()
        except (duckdb.IOException, duckdb.HTTPException):
            # a swap committed and deleted a file of the state listed: list the new state
            if attempt == attempts:
                raise
    return []


def live_columns(
    conn: duckdb.DuckDBPyConnection,
    engine: sa.Engine,
    lake: ObjectStore,
    dataset: str,
    hiveperiod: str | None = None,
    region: str | None = None,
) -> set[str]:
    """The column names of the dataset's LIVE files (of one date and region if given); empty
    when there are no such files."""
    return {name for (name, *_) in read_live(conn, engine, lake, dataset, f"DESCRIBE {LIVE_VIEW}", hiveperiod, region)}


def device_sql(columns: set[str]) -> str:
    """A row's device: the record's `device_id`, or the raw key's first part if no file has one."""
    return "CAST(device_id AS VARCHAR)" if "device_id" in columns else "split_part(source_file, '/', 1)"

"""Rows of a DuckDB query -> Parquet files in the lake, named after their batch, verified by their footers."""

from __future__ import annotations

import duckdb

from datalog_platform.core.ledger.records import LakeFile
from datalog_platform.core.store import ObjectStore

PARTITIONED = "PARTITION_BY (hiveperiod, dstrct_code)"


def copy_to_lake(
    conn: duckdb.DuckDBPyConnection,
    lake: ObjectStore,
    select: str,
    params: dict[str, object],
    target: str,
    batch_id: str,
    expected: int,
    layout: str = PARTITIONED,
    name: str = "",
) -> list[LakeFile]:
    """COPY the rows of `select` under the lake directory `target` as Parquet files
    `part-{batch_id}-{name}{i}`, then verify every file's footer and the row count. A batch that
    writes twice into one dataset gives each COPY its own `name`.

    `layout` is a COPY option: by default the rows (with `hiveperiod` and `dstrct_code` columns)
    are split into hive directories under the dataset `target`; `FILE_SIZE_BYTES n` writes files
    of about n bytes into the one directory `target` (DuckDB cannot combine the two).
    """
    count, files = conn.execute(
        f"""COPY ({select}) TO $target (FORMAT parquet, COMPRESSION zstd, {layout},
            OVERWRITE_OR_IGNORE true, FILENAME_PATTERN $pattern, RETURN_FILES true)""",
        {**params, "target": lake.uri(target), "pattern": f"part-{batch_id}-{name}{{i}}"},
    ).fetchone()
    if count != expected:
        raise RuntimeError(f"COPY to {target} wrote {count} rows, expected {expected}")
    footers = conn.execute(
        "SELECT file_name, num_rows, file_size_bytes FROM parquet_file_metadata(?)", [list(files)]
    ).fetchall()
    if sum(rows for _, rows, _ in footers) != expected or len(footers) != len(files):
        raise RuntimeError(f"{target} files hold {sum(r for _, r, _ in footers)} rows, expected {expected}")
    root = lake.uri().rstrip("/") + "/"
    written = [
        LakeFile(name[len(root) :] if name.startswith(root) else name, int(rows), int(size))
        for name, rows, size in footers
    ]
    # With FILE_SIZE_BYTES, a thread that got no rows can still leave a file without any
    lake.delete([f.path for f in written if f.rows == 0])
    return [f for f in written if f.rows > 0]

"""Compaction: rewrite a hive directory's many small files into few, from the lake's own Parquet.

Hourly runs leave one file per run in a directory. A compaction claims the directory's files in
the ledger, writes their rows into files of about a target size, and swaps them in one commit
(see `ledger.swap`); readers of the manifest never see the directory half-rewritten.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import duckdb
import sqlalchemy as sa

from datalog_platform.core.ingest import LeaseRenewer
from datalog_platform.core.ledger import protocol, swap
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.write import copy_to_lake


@dataclass(frozen=True)
class CompactionReport:
    batch_id: str
    directory: swap.Directory
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    seconds: float


def compact_directory(
    engine: sa.Engine,
    conn: duckdb.DuckDBPyConnection,
    lake: ObjectStore,
    directory: swap.Directory,
    target_file_bytes: int,
    run_id: str | None,
    lease_seconds: int,
    max_attempts: int,
) -> CompactionReport | None:
    """Compact one directory; None if another writer holds its files. On any error the new files
    are deleted and the old ones stay LIVE."""
    started = time.perf_counter()
    claim = swap.claim_compaction(engine, directory, run_id, lease_seconds)
    if claim is None:
        return None
    sources = [lake.uri(f.path) for f in claim.files]
    try:
        with LeaseRenewer(engine, claim.batch_id, lease_seconds):
            expected, bytes_before = conn.execute(
                "SELECT sum(num_rows), sum(file_size_bytes) FROM parquet_file_metadata($files)", {"files": sources}
            ).fetchone()
            target = f"{directory.dataset}/hiveperiod={directory.hiveperiod}/dstrct_code={directory.dstrct_code}"
            protocol.record_intent(engine, claim.batch_id, [target])
            # The files of one directory may disagree on a column's type (a field seen as a number
            # in one batch and as text in another); union_by_name widens it.
            written = copy_to_lake(
                conn,
                lake,
                "SELECT * FROM read_parquet($files, union_by_name = true, hive_partitioning = false)",
                {"files": sources},
                target,
                claim.batch_id,
                int(expected),
                layout=f"FILE_SIZE_BYTES {int(target_file_bytes)}",
            )
            protocol.commit_batch(engine, claim.batch_id, [], written, int(expected), 0)
    except Exception as exc:
        protocol.abort_batch(engine, lake, claim.batch_id, f"{type(exc).__name__}: {exc}", max_attempts)
        raise
    protocol.delete_retired(engine, lake, claim.batch_id)
    return CompactionReport(
        batch_id=claim.batch_id,
        directory=directory,
        files_before=len(claim.files),
        files_after=len(written),
        rows=int(expected),
        bytes_before=int(bytes_before),
        bytes_after=sum(f.bytes for f in written),
        seconds=time.perf_counter() - started,
    )

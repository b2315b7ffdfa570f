"""The compaction of crowded hive directories."""

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.core.compaction import compact_directory
from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.ledger import protocol, swap
from datalog_platform.core.ledger.records import DATASET
from datalog_platform.defs.ingest.assets import datalog_parquet
from datalog_platform.defs.partitions import partition_key
from datalog_platform.defs.resources import CompactionResource, LedgerResource, StoresResource


class CompactionConfig(dg.Config):
    min_files: int | None = Field(
        default=None,
        description="Compact directories with more than this many files of a partition (DATALOG_COMPACTION_MIN_FILES)",
    )
    target_file_mb: int | None = Field(
        default=None, description="Size of the files written, in MB (DATALOG_COMPACTION_TARGET_MB)"
    )
    max_directories: int = Field(default=500, description="Most directories one run compacts; the rest wait a day")


@dg.op(description="Rewrite every hive directory with too many files into files of the target size.")
def compact_lake(
    context: dg.OpExecutionContext,
    config: CompactionConfig,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
    compaction: CompactionResource,
) -> None:
    min_files = config.min_files if config.min_files is not None else compaction.min_files
    target_bytes = (config.target_file_mb or compaction.target_mb) << 20
    engine = ledger.get_engine()
    lake = stores.lake()
    protocol.recover_expired(engine, lake, ledger.max_attempts)
    crowded = swap.crowded_directories(engine, min_files)
    if not crowded:
        context.log.info(f"no directory holds more than {min_files} files of one partition")
        return
    first_date, _ = ledger.date_range()
    before = after = skipped = 0
    with duckdb.get_connection() as conn:
        access = stores.s3_access()
        if access is not None:
            enable_s3(conn, access)
        for directory in crowded[: config.max_directories]:
            report = compact_directory(
                engine,
                conn,
                lake,
                directory,
                target_bytes,
                context.run.run_id,
                ledger.lease_seconds,
                ledger.max_attempts,
            )
            if report is None:
                skipped += 1
                continue
            before, after = before + report.files_before, after + report.files_after
            if directory.dataset == DATASET and directory.hiveperiod >= first_date:
                context.log_event(
                    dg.AssetObservation(
                        asset_key=datalog_parquet.key,
                        partition=partition_key(directory.hiveperiod, directory.dstrct_code),
                        metadata={
                            "compacted_by": report.batch_id,
                            "files_before": report.files_before,
                            "files_after": report.files_after,
                            "rows": report.rows,
                            "bytes_after": report.bytes_after,
                            "seconds": round(report.seconds, 3),
                        },
                    )
                )
    context.log.info(
        f"compacted {len(crowded[: config.max_directories]) - skipped} directories: {before} files -> {after}; "
        f"{skipped} skipped (held by a rebuild), {max(len(crowded) - config.max_directories, 0)} left for the next run"
    )


@dg.job(description="Merge the small files of crowded hive directories, from the lake's own Parquet.")
def compact_lake_job() -> None:
    compact_lake()

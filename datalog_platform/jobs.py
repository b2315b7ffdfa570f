"""Daily upkeep: the full reconciliation of raw keys, and the compaction of the lake.

The discovery sensor only re-lists the trailing window; the reconciliation is what guarantees that
no key is missed, whatever hour it was filed under and however late it arrived. Hourly runs leave
one file each in a hive directory; the compaction merges them into files of a target size.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.core.compaction import compact_directory
from datalog_platform.core.discovery import reconcile
from datalog_platform.core.duckdb_setup import enable_s3
from datalog_platform.core.ledger import protocol, swap
from datalog_platform.core.ledger.protocol import utcnow
from datalog_platform.core.transform.convert import DATASET
from datalog_platform.partitions import date_partitions, partition_key
from datalog_platform.resources.ledger import LedgerResource
from datalog_platform.resources.stores import StoresResource
from datalog_platform.sensors.discovery import RAW_ASSET_KEY, backlog_metadata
from datalog_platform.settings import Settings


@dg.op(description="List every object of the raw store and register those the ledger lacks.")
def reconcile_raw_keys(context: dg.OpExecutionContext, ledger: LedgerResource, stores: StoresResource) -> None:
    raw = stores.raw()
    engine = ledger.get_engine()
    found = reconcile(raw, engine, ledger.tz_offset_hours)
    if found.registered:
        context.log.warning(f"reconciliation registered {found.registered} key(s) that discovery had missed")
    context.log_event(
        dg.AssetObservation(
            asset_key=RAW_ASSET_KEY,
            metadata={
                "reconciled": True,
                "keys_listed": found.seen,
                "keys_found": found.registered,
                "bytes_found": found.bytes,
                "keys_unrouted": found.unrouted,
                "objects_ignored": found.ignored,
                "list_requests": raw.list_requests,
                **backlog_metadata(engine, utcnow()),
            },
        )
    )


@dg.job(description="Full listing of the raw store; registers every object the ledger lacks (idempotent).")
def reconcile_raw_keys_job() -> None:
    reconcile_raw_keys()


# RUNNING by default: this is the guarantee behind "no key is ever missed", and it costs one full
# listing a day (one request per 1,000 objects).
daily_reconciliation_schedule = dg.ScheduleDefinition(
    name="daily_reconciliation_schedule",
    job=reconcile_raw_keys_job,
    cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day, list the whole raw store and register what discovery missed.",
)


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
) -> None:
    settings = Settings.from_env()
    min_files = config.min_files if config.min_files is not None else settings.compaction_min_files
    target_bytes = (config.target_file_mb or settings.compaction_target_mb) << 20
    engine = ledger.get_engine()
    lake = stores.lake()
    protocol.recover_expired(engine, lake, ledger.max_attempts)
    crowded = swap.crowded_directories(engine, min_files)
    if not crowded:
        context.log.info(f"no directory holds more than {min_files} files of one partition")
        return
    first_date = date_partitions.start.strftime("%Y-%m-%d")
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
                        asset_key="datalog_parquet",
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


# RUNNING by default: without it, hourly ingest leaves 24 files a day in every directory.
daily_compaction_schedule = dg.ScheduleDefinition(
    name="daily_compaction_schedule",
    job=compact_lake_job,
    cron_schedule="30 4 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day, rewrite directories with more than DATALOG_COMPACTION_MIN_FILES files into few.",
)

"""Raw logs -> claimed key batches -> the hive-partitioned Parquet dataset."""

from collections.abc import Iterator

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.ingest import ingest_batch
from datalog_platform.ledger import fields, protocol, swap
from datalog_platform.ledger.schema import REBUILD
from datalog_platform.partitions import (
    date_and_region,
    date_partitions,
    date_region_partitions,
    partition_key,
)
from datalog_platform.resources.duckdb import enable_s3
from datalog_platform.resources.ledger import LedgerResource
from datalog_platform.resources.stores import StoresResource
from datalog_platform.transform.convert import DATASET
from datalog_platform.transform.shape import RECORD_HASH, RESCUED
from datalog_platform.transform.timestamps import install_macros

raw_datalog_logs = dg.AssetSpec(
    "raw_datalog_logs",
    description="Raw NDJSON telemetry uploaded by edge devices: {device}/{YYYYMMDDHH}/*.json[.gz].",
    group_name="raw",
    kinds={"s3", "json"},
)


# The tag Dagster puts on every run of a backfill.
BACKFILL_TAG = "dagster/backfill"


class ClaimConfig(dg.Config):
    key_limit_per_run: int | None = Field(
        default=None, description="Most keys this run claims (default: the ledger's, DATALOG_KEY_LIMIT_PER_RUN)"
    )
    rebuild: bool = Field(
        default=False,
        description=(
            "Rebuild the partition: reprocess every key, commit, then remove its older files. "
            "Runs of a backfill always rebuild."
        ),
    )


class ParquetConfig(dg.Config):
    ram_limit: str | None = Field(
        default=None, description="DuckDB memory_limit for this run (default: DATALOG_RAM_LIMIT)"
    )


@dg.asset(
    deps=[raw_datalog_logs],
    partitions_def=date_region_partitions,
    group_name="ingest",
    kinds={"sql"},
    output_required=False,
)
def claimed_key_batches(
    context: dg.AssetExecutionContext,
    config: ClaimConfig,
    ledger: LedgerResource,
    stores: StoresResource,
) -> Iterator[dg.Output[protocol.Batch]]:
    """A batch of pending raw keys of the partition, leased to this run in the ledger; in a
    backfill (or with `rebuild`), every key of the partition, to rebuild it."""
    part_date, region = date_and_region(context.partition_key)
    engine = ledger.get_engine()
    recovered = protocol.recover_expired(engine, stores.lake(), ledger.max_attempts)
    if recovered:
        context.log.warning(f"recovered {len(recovered)} batch(es) whose writer stopped: {recovered}")
    rebuild = config.rebuild or BACKFILL_TAG in context.run.tags
    if rebuild:
        try:
            batch = swap.claim_rebuild(engine, part_date, region, context.run.run_id, ledger.lease_seconds)
        except swap.PartitionBusyError as exc:
            raise dg.Failure(description=str(exc)) from exc
    else:
        batch = protocol.claim_batch(
            engine,
            part_date,
            region,
            config.key_limit_per_run or ledger.key_limit_per_run,
            context.run.run_id,
            ledger.lease_seconds,
        )
    if batch is None:
        context.log.info(f"no {'keys' if rebuild else 'pending keys'} for {part_date} / {region}; nothing to ingest")
        return
    yield dg.Output(
        batch,
        metadata={
            "batch_id": batch.batch_id,
            "keys": len(batch.keys),
            "bytes": batch.bytes,
            "rebuild": batch.kind == REBUILD,
            "recovered_batches": len(recovered),
        },
    )


def column_schema(known: dict[str, str]) -> dg.TableSchema:
    """The dataset's columns: the record fields as the ledger types them, then the pipeline's."""
    own = {
        RESCUED: ("JSON", "record values that did not fit their field's type, by field name"),
        "datetime_wita": ("TIMESTAMP", "the heartbeat's instant in local time"),
        "source_file": ("VARCHAR", "the raw key the row came from"),
        RECORD_HASH: ("BIGINT", "identity of the record: instant and payload"),
        "hiveperiod": ("VARCHAR", "hive partition: local date"),
        "dstrct_code": ("VARCHAR", "hive partition: the device's region"),
    }
    return dg.TableSchema(
        columns=[dg.TableColumn(name, kind) for name, kind in sorted(known.items()) if name not in own]
        + [dg.TableColumn(name, kind, description=text) for name, (kind, text) in own.items()]
    )


@dg.asset(
    partitions_def=date_region_partitions,
    group_name="ingest",
    kinds={"duckdb", "parquet"},
)
def datalog_parquet(
    context: dg.AssetExecutionContext,
    config: ParquetConfig,
    claimed_key_batches: protocol.Batch,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
) -> dg.MaterializeResult:
    """The hive partition hiveperiod=DATE/dstrct_code=REGION with every key claimed for it; a
    rebuild replaces the partition's files once its new ones are committed."""
    batch = claimed_key_batches
    lake = stores.lake()
    access = stores.s3_access()
    with duckdb.get_connection() as conn:
        if config.ram_limit:
            conn.execute("SET memory_limit = ?", [config.ram_limit])
        install_macros(conn)
        if access is not None:
            enable_s3(conn, access)
        report = ingest_batch(
            ledger.get_engine(),
            conn,
            stores.raw(),
            lake,
            batch,
            ledger.tz_offset_hours,
            ledger.lease_seconds,
            ledger.max_attempts,
        )
    own_date, region = date_and_region(context.partition_key)
    known = fields.known_fields(ledger.get_engine(), DATASET)
    for day, rows in sorted(report.partitions.items()):
        # Rows keep their own local date; a neighbouring date partition was updated too.
        if day != own_date and day >= date_partitions.start.strftime("%Y-%m-%d"):
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=partition_key(day, region),
                    metadata={"rows": rows, "batch_id": batch.batch_id, "written_by_partition": own_date},
                )
            )
    context.log.info(
        f"batch {batch.batch_id}: {report.rows} rows from {report.keys} keys in {report.seconds:.2f}s, "
        f"{report.quarantined_lines} lines quarantined"
    )
    return dg.MaterializeResult(
        metadata={
            "batch_id": report.batch_id,
            "rebuild": batch.kind == REBUILD,
            "files_replaced": report.replaced_files,
            "keys": report.keys,
            "rows": report.rows,
            "rows_in_partition": report.partitions.get(own_date, 0),
            "quarantined_lines": report.quarantined_lines,
            "quarantined_keys": report.quarantined_keys,
            "line_path_files": report.line_path_files,
            "duplicates_removed": report.duplicate_rows,
            "rescued_values": sum(report.rescued_values.values()),
            "rescued_by_field": dg.MetadataValue.json(report.rescued_values),
            "new_fields": dg.MetadataValue.json(report.new_fields),
            "widened_fields": dg.MetadataValue.json(report.widened_fields),
            "dagster/column_schema": column_schema(known),
            "files": len(report.files),
            "bytes_read": report.bytes_read,
            "bytes_written": report.bytes_written,
            "seconds": round(report.seconds, 3),
            "rows_per_second": round(report.rows_per_second),
            "path": dg.MetadataValue.path(lake.uri(f"{DATASET}/hiveperiod={own_date}/dstrct_code={region}")),
        }
    )


ingest_partition_job = dg.define_asset_job(
    "ingest_partition_job",
    selection=[claimed_key_batches, datalog_parquet],
    description="Claim up to key_limit_per_run pending keys of one date x region partition and ingest them.",
)

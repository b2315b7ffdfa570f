"""Claimed key batches and the hive-partitioned Parquet dataset, computed together by one step."""

from collections.abc import Iterator
from typing import Literal

import dagster as dg
from pydantic import Field

from datalog_platform.core.discovery import register_partition
from datalog_platform.core.freshness import batch_lag
from datalog_platform.core.ingest import BatchReport, ingest_batch
from datalog_platform.core.ledger import claims, fields, holds, protocol, swap
from datalog_platform.core.ledger.records import DATASET
from datalog_platform.core.transform.shape import HASH_SCHEME, RECORD_HASH, RESCUED
from datalog_platform.defs.constants import OWNERS, TRIGGER_TAG
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.partitions import DECLARED_PARTITIONS, date_and_region, partition_key
from datalog_platform.defs.registry.assets import device_registry
from datalog_platform.defs.resources import LedgerResource, ReaderResource, StoresResource


class IngestConfig(dg.Config):
    mode: Literal["auto", "incremental", "rebuild"] = Field(
        default="auto",
        description=(
            "incremental: claim up to key_limit_per_run PENDING keys; rebuild: register the "
            "partition's raw objects, reprocess every key, then replace the partition's older files; "
            "auto: incremental for runs of a sensor, schedule or `datalog ingest`, rebuild for runs a "
            "person launches (Materialize, backfills)."
        ),
    )
    key_limit_per_run: int | None = Field(
        default=None,
        description="Most keys an incremental run claims (default: the ledger's, DATALOG_KEY_LIMIT_PER_RUN)",
    )
    ram_limit: str | None = Field(
        default=None, description="RAM limit of this run, DuckDB taking 80 % of it (default: DATALOG_RAM_LIMIT)"
    )


claimed_key_batches = dg.AssetSpec(
    "claimed_key_batches",
    deps=[raw_datalog_logs, device_registry],
    description=(
        "The raw keys of the partition leased to one batch in the ledger: its pending keys, or, "
        "in a rebuild, every key of the partition."
    ),
    group_name="ingest",
    kinds={"sql"},
    owners=OWNERS,
    tags={"layer": "ledger"},
    skippable=True,
)

datalog_parquet = dg.AssetSpec(
    "datalog_parquet",
    deps=[claimed_key_batches],
    description=(
        "The hive partition hiveperiod=DATE/dstrct_code=REGION of the Parquet lake, with every "
        "key claimed for it; a rebuild replaces the partition's files once its new ones are committed."
    ),
    group_name="ingest",
    kinds={"duckdb", "parquet"},
    owners=OWNERS,
    tags={"layer": "lake"},
    skippable=True,
)


def column_schema(known: dict[str, str]) -> dg.TableSchema:
    """The dataset's columns: the record fields as the ledger types them, then the pipeline's."""
    own = {
        RESCUED: ("JSON", "record values that did not fit their field's type, by field name"),
        "datetime_wita": ("TIMESTAMP", "the heartbeat's instant in local time (UTC + DATALOG_TZ_OFFSET_HOURS)"),
        "source_file": ("VARCHAR", "the raw key the row came from"),
        RECORD_HASH: ("BIGINT", "identity of the record: instant and payload (XOR of DuckDB hashes, 63 bits)"),
        HASH_SCHEME: ("VARCHAR", "which DuckDB hash made _record_hash (the hash of a fixed probe)"),
        "hiveperiod": ("VARCHAR", "hive partition: the local date of datetime_wita"),
        "dstrct_code": ("VARCHAR", "hive partition: the device's region"),
    }
    record = [
        dg.TableColumn(
            name, kind, description="record field as the devices send it; its type is fixed by its first batch"
        )
        for name, kind in sorted(known.items())
        if name not in own
    ]
    return dg.TableSchema(
        columns=record + [dg.TableColumn(name, kind, description=text) for name, (kind, text) in own.items()]
    )


def _claim(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    ledger: LedgerResource,
    stores: StoresResource,
    rebuild: bool,
) -> tuple[claims.Batch | None, dict[str, object]]:
    """The run's own batch (None when there is nothing to claim) and what the claim found."""
    part_date, region = date_and_region(context.partition_key)
    engine = ledger.get_engine()
    recovered = protocol.recover_expired(engine, stores.lake(), ledger.max_attempts)
    if recovered:
        context.log.warning(f"recovered {len(recovered)} batch(es) whose writer stopped: {recovered}")
    found: dict[str, object] = {"recovered_batches": len(recovered)}
    if not rebuild:
        limit = config.key_limit_per_run or ledger.key_limit_per_run
        try:
            batch = protocol.claim_batch(
                engine,
                part_date,
                region,
                limit,
                context.run.run_id,
                ledger.lease_seconds,
                ledger.max_attempts,
                max_bytes=ledger.batch_mb * 1024 * 1024,
            )
        except holds.PartitionBusyError as exc:
            raise dg.Failure(description=str(exc)) from exc
        return batch, found
    registered = register_partition(
        stores.raw(), engine, part_date, region, ledger.tz_offset_hours, ledger.rewrite_policy
    )
    found["keys_registered"] = registered.registered
    try:
        batch = swap.claim_rebuild(engine, part_date, region, context.run.run_id, ledger.lease_seconds)
    except holds.PartitionBusyError as exc:
        raise dg.Failure(description=str(exc)) from exc
    return batch, found


def _parquet_metadata(
    report: BatchReport, batch: claims.Batch, row_count: int, known: dict[str, str], path: str
) -> dict[str, object]:
    return {
        "dagster/row_count": row_count,
        "batch_id": report.batch_id,
        "keys": report.keys,
        "rows": report.rows,
        "rows_to_own_date": report.partitions.get(batch.part_date, 0),
        "files_replaced": report.replaced_files,
        "quarantined_lines": report.quarantined_lines,
        "quarantined_keys": report.quarantined_keys,
        "missing_keys": report.missing_keys,
        "changed_keys": report.changed_keys,
        "failed_keys": report.failed_keys,
        "kept_keys": report.kept_keys,
        "rows_carried_over": report.carried_rows,
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
        "seconds_by_phase": dg.MetadataValue.json({k: round(v, 3) for k, v in report.phase_seconds.items()}),
        "rows_per_second": round(report.rows_per_second),
        "path": dg.MetadataValue.path(path),
    }


def _warn_of_keys_not_written(context: dg.AssetExecutionContext, report: BatchReport) -> None:
    """Say in the run's log which of the batch's objects were not written, and where to look."""
    parts = [
        f"{report.missing_keys} object(s) were gone from the raw store (MISSING; a later sighting makes them "
        "PENDING again, or `datalog ledger requeue --status MISSING`)"
        if report.missing_keys
        else "",
        f"{report.changed_keys} object(s) changed during the read (their new version waits for the next run)"
        if report.changed_keys
        else "",
        f"{report.failed_keys} object(s) crashed the reader and are FAILED" if report.failed_keys else "",
    ]
    if any(parts):
        context.log.warning(
            f"batch {report.batch_id}: " + "; ".join(p for p in parts if p) + "; `datalog ledger status` lists them"
        )


def _live_rows(ledger: LedgerResource, day: str, region: str) -> int:
    """Rows of the LIVE files of one hive directory, from the ledger's manifest."""
    return sum(f.rows or 0 for f in swap.live_files(ledger.get_engine(), DATASET, day, region))


@dg.multi_asset(
    name="ingest_partition",
    specs=[claimed_key_batches, datalog_parquet],
    partitions_def=DECLARED_PARTITIONS,
    # A run must write with the batch it claimed itself: the claim and the write are one step
    # that cannot be split, whichever of the two assets a person selects.
    can_subset=False,
    description="Claim the partition's keys in the ledger, convert them with DuckDB, verify and commit.",
)
def ingest_partition(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    ledger: LedgerResource,
    stores: StoresResource,
    reader: ReaderResource,
) -> Iterator[dg.MaterializeResult]:
    """One batch of a date x region partition: claim, convert, verify, commit.

    Runs of a sensor, a schedule or `datalog ingest` ingest the pending keys. A run a person
    launches (Materialize, a backfill) rebuilds the partition from every raw object it holds, so
    the partition is complete and each row in it once afterwards.
    """
    trigger = context.run.tags.get(TRIGGER_TAG)
    rebuild = config.mode == "rebuild" or (config.mode == "auto" and trigger is None)
    kind = "rebuild" if rebuild else "incremental"
    launched_by = trigger or ("backfill" if context.run.tags.get("dagster/backfill") else "person")
    batch, found = _claim(context, config, ledger, stores, rebuild)
    own_date, region = date_and_region(context.partition_key)
    if batch is None:
        context.log.info(f"no {'keys' if rebuild else 'pending keys'} for {own_date} / {region}; nothing to ingest")
        return
    yield dg.MaterializeResult(
        asset_key=claimed_key_batches.key,
        metadata={
            "batch_id": batch.batch_id,
            "run_kind": kind,
            "launched_by": launched_by,
            "keys": len(batch.keys),
            "bytes": batch.bytes,
            **found,
        },
    )
    lake = stores.lake()
    report = ingest_batch(
        ledger.get_engine(),
        reader.settings(stores.s3_access(), config.ram_limit),
        stores.raw(),
        lake,
        batch,
        ledger.tz_offset_hours,
        ledger.lease_seconds,
        ledger.max_attempts,
        ledger.rewrite_policy,
    )
    _warn_of_keys_not_written(context, report)
    known = fields.known_fields(ledger.get_engine(), DATASET)
    # Freshness, plotted by the UI: the commit minus the discovery of the batch's newest and oldest key.
    lag = batch_lag(ledger.get_engine(), batch.batch_id)
    lag_metadata = lag.metadata() if lag is not None else {}
    first_date, _ = ledger.date_range()
    for day, rows in sorted(report.partitions.items()):
        # Rows keep their own local date; a neighbouring date partition was updated too.
        if day != own_date and day >= first_date:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=datalog_parquet.key,
                    partition=partition_key(day, region),
                    metadata={
                        "dagster/row_count": _live_rows(ledger, day, region),
                        "rows": rows,
                        "batch_id": batch.batch_id,
                        "written_by_partition": own_date,
                        **lag_metadata,
                    },
                )
            )
    context.log.info(
        f"{kind} batch {batch.batch_id}: {report.rows} rows from {report.keys} keys in {report.seconds:.2f}s, "
        f"{report.quarantined_lines} lines quarantined"
    )
    path = lake.uri(f"{DATASET}/hiveperiod={own_date}/dstrct_code={region}")
    metadata = _parquet_metadata(report, batch, _live_rows(ledger, own_date, region), known, path)
    yield dg.MaterializeResult(
        asset_key=datalog_parquet.key,
        metadata={"run_kind": kind, "launched_by": launched_by, **metadata, **lag_metadata},
    )

"""The checks on `datalog_parquet`: reconciliation, duplicates, orphan files, quarantine, freshness."""

from collections.abc import Iterator
from datetime import datetime

import dagster as dg
from dagster_duckdb import DuckDBResource

from datalog_platform.core import freshness
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.stats import partitions_with_keys
from datalog_platform.core.quality import PartitionQuality, measure
from datalog_platform.defs.ingest.assets import datalog_parquet
from datalog_platform.defs.partitions import date_and_region
from datalog_platform.defs.resources import LedgerResource, QualityResource, StoresResource, lake_connection

RECONCILIATION = "reconciliation"
NO_DUPLICATES = "no_duplicate_records"
NO_ORPHANS = "no_orphan_files"
QUARANTINE_RATE = "quarantine_rate"
FRESHNESS = "freshness"

_SPECS = [
    dg.AssetCheckSpec(
        RECONCILIATION,
        asset=datalog_parquet.key,
        description="Rows and quarantined lines in the lake's LIVE files from the partition's keys equal "
        "what the ledger recorded for those keys",
    ),
    dg.AssetCheckSpec(
        NO_DUPLICATES,
        asset=datalog_parquet.key,
        description="No record (device, instant, payload) is stored twice in the partition",
    ),
    dg.AssetCheckSpec(
        NO_ORPHANS,
        asset=datalog_parquet.key,
        description="Every Parquet file in the partition's directories is in the manifest, and every "
        "LIVE file of the manifest is in the store",
    ),
    dg.AssetCheckSpec(
        QUARANTINE_RATE,
        asset=datalog_parquet.key,
        description="Share of quarantined lines: warns above the warn rate, fails above the fail rate",
    ),
    dg.AssetCheckSpec(
        FRESHNESS,
        asset=datalog_parquet.key,
        description="No key of the partition has waited longer than the set time since its discovery without "
        "being committed (PENDING, or CLAIMED by a batch still writing)",
    ),
]


def evaluate(
    quality: PartitionQuality,
    thresholds: QualityResource,
    waiting: freshness.Waiting,
    last_commit: freshness.BatchLag | None,
    now: datetime,
) -> list[dg.AssetCheckResult]:
    """The five check results of one partition's measurements, each naming the partition (the
    checks are not partitioned, so that the UI can run them alone). Freshness is measured on the
    clock of the ingest materializations' lag: from a key's discovery to its commit, or to `now`
    for keys not committed yet."""
    key = datalog_parquet.key
    q = quality
    partition = f"{q.day}|{q.region}"
    rate = q.quarantine_rate
    warning = thresholds.quarantine_warn_rate < rate <= thresholds.quarantine_fail_rate
    severity = dg.AssetCheckSeverity.WARN if warning else dg.AssetCheckSeverity.ERROR
    lag = waiting.lag_seconds(now)
    return [
        dg.AssetCheckResult(
            asset_key=key,
            check_name=RECONCILIATION,
            passed=q.lake_error is None
            and q.lake_rows == q.ledger.rows
            and q.lake_quarantined == q.ledger.quarantined_lines,
            metadata={
                "partition": partition,
                "lake_error": q.lake_error or "",
                "lake_rows": q.lake_rows,
                "ledger_rows": q.ledger.rows,
                "lake_quarantined_lines": q.lake_quarantined,
                "ledger_quarantined_lines": q.ledger.quarantined_lines,
                "duplicates_dropped": q.ledger.duplicate_rows,
            },
        ),
        dg.AssetCheckResult(
            asset_key=key,
            check_name=NO_DUPLICATES,
            passed=q.directory.duplicate_rows == 0,
            metadata={
                "partition": partition,
                "duplicate_rows": q.directory.duplicate_rows,
                "conflicts": q.directory.conflicts,
                "rows": q.directory.rows,
            },
        ),
        dg.AssetCheckResult(
            asset_key=key,
            check_name=NO_ORPHANS,
            passed=not q.orphan_files and not q.missing_files,
            metadata={
                "partition": partition,
                "orphan_files": len(q.orphan_files),
                "missing_files": len(q.missing_files),
                "examples": dg.MetadataValue.json((q.orphan_files + q.missing_files)[:20]),
            },
        ),
        dg.AssetCheckResult(
            asset_key=key,
            check_name=QUARANTINE_RATE,
            passed=rate <= thresholds.quarantine_warn_rate,
            severity=severity,
            metadata={
                "partition": partition,
                "quarantine_rate": round(rate, 6),
                "quarantined_lines": q.ledger.quarantined_lines,
                "warn_above": thresholds.quarantine_warn_rate,
                "fail_above": thresholds.quarantine_fail_rate,
            },
        ),
        dg.AssetCheckResult(
            asset_key=key,
            check_name=FRESHNESS,
            passed=lag <= thresholds.pending_max_age_minutes * 60,
            metadata={
                "partition": partition,
                "pending_keys": q.ledger.by_status.get("PENDING", 0),
                "waiting_keys": waiting.keys,
                "lag_seconds": lag,
                "max_age_minutes": thresholds.pending_max_age_minutes,
                **({f"last_commit_{k}": v for k, v in last_commit.metadata().items()} if last_commit else {}),
            },
        ),
    ]


def across_partitions(checks: set[str], results: dict[str, list[dg.AssetCheckResult]]) -> list[dg.AssetCheckResult]:
    """One result for each of `checks` over many partitions (partition key -> its results): passed
    if it passed in every partition (or there is none), else as severe as its worst failure, naming
    the failing partitions."""
    by_check: dict[str, list[tuple[str, dg.AssetCheckResult]]] = {name: [] for name in checks}
    for partition, partition_results in results.items():
        for result in partition_results:
            by_check[result.check_name].append((partition, result))
    merged = []
    for name, outcomes in sorted(by_check.items()):
        failed = [(partition, r) for partition, r in outcomes if not r.passed]
        errors = any(r.severity == dg.AssetCheckSeverity.ERROR for _, r in failed)
        merged.append(
            dg.AssetCheckResult(
                asset_key=datalog_parquet.key,
                check_name=name,
                passed=not failed,
                severity=dg.AssetCheckSeverity.ERROR if errors else dg.AssetCheckSeverity.WARN,
                metadata={
                    "partitions_checked": len(outcomes),
                    "partitions_failed": len(failed),
                    "failed_partitions": dg.MetadataValue.json([partition for partition, _ in failed][:50]),
                },
            )
        )
    return merged


# can_subset: each check can run alone, or all of them together. A run with a partition (every
# ingest and analytics run) checks that partition. A run without one (the Checks tab's Execute
# buttons) checks every partition with keys. The specs carry no partitions: Dagster's UI (1.13)
# cannot execute a partitioned check on its own.
@dg.multi_asset_check(
    specs=_SPECS, can_subset=True, description="Reconciliation, duplicates, orphan files, quarantine, freshness"
)
def datalog_parquet_checks(
    context: dg.AssetCheckExecutionContext,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
    quality: QualityResource,
) -> Iterator[dg.AssetCheckResult]:
    run = context.op_execution_context
    engine, lake = ledger.get_engine(), stores.lake()
    if run.has_partition_key:
        partitions = [date_and_region(run.partition_key)]
    else:
        partitions = partitions_with_keys(engine, *ledger.date_range())
    selected = {key.name for key in context.selected_asset_check_keys}
    results: dict[str, list[dg.AssetCheckResult]] = {}
    with lake_connection(duckdb, stores) as conn:
        for day, region in partitions:
            measured = measure(conn, engine, lake, day, region)
            lag = freshness.waiting(engine, day, region), freshness.last_commit(engine, day, region)
            evaluated = evaluate(measured, quality, *lag, utcnow())
            results[f"{day}|{region}"] = [r for r in evaluated if r.check_name in selected]
    if run.has_partition_key:
        yield from next(iter(results.values()))
    else:
        context.log.info(f"checked {len(partitions)} partition(s) with keys")
        yield from across_partitions(selected, results)

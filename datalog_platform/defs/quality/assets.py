"""The data quality report of each partition."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from datalog_platform.core.quality import PartitionQuality, measure
from datalog_platform.defs.constants import OWNERS
from datalog_platform.defs.ingest.assets import datalog_parquet
from datalog_platform.defs.partitions import DECLARED_PARTITIONS, date_and_region
from datalog_platform.defs.resources import LedgerResource, StoresResource, lake_connection


def report_markdown(q: PartitionQuality) -> str:
    lines = [
        f"## Data quality {q.day} / {q.region}",
        "",
        f"Quality score **{q.quality_score}** (records valid and unambiguous, of all lines read)",
        "",
        "| outcome | reason | count |",
        "|---|---|---|",
        f"| pass | written | {q.ledger.rows} |",
    ]
    lines += [f"| fail | {reason} | {n} |" for reason, n in sorted(q.quarantine_reasons.items())]
    lines += [
        f"| fail | unreadable_file (keys) | {q.ledger.by_status.get('QUARANTINED', 0)} |",
        f"| dropped | duplicate_record | {q.ledger.duplicate_rows} |",
        f"| kept | conflicting_payload (rows) | {q.directory.conflict_rows} |",
    ]
    lines += [f"| kept | rescued_value: {f} | {n} |" for f, n in sorted(q.directory.rescued_by_field.items())]
    lines += ["", "### Schema changes", ""]
    if q.schema_changes:
        lines += ["| field | type | change |", "|---|---|---|"]
        for c in q.schema_changes:
            change = "new field" if c.previous_type is None else f"widened from {c.previous_type}"
            lines.append(f"| {c.field} | {c.type} | {change} |")
    else:
        lines.append("none")
    return "\n".join(lines)


@dg.asset(
    deps=[datalog_parquet],
    partitions_def=DECLARED_PARTITIONS,
    group_name="quality",
    kinds={"duckdb"},
    owners=OWNERS,
    tags={"layer": "quality"},
)
def data_quality_report(
    context: dg.AssetExecutionContext,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
) -> dg.MaterializeResult:
    """Pass and fail counts by reason, quality score, quarantine and duplicate rates and the
    day's schema changes of one partition, as markdown and as numbers the UI plots."""
    day, region = date_and_region(context.partition_key)
    with lake_connection(duckdb, stores) as conn:
        q = measure(conn, ledger.get_engine(), stores.lake(), day, region)
    return dg.MaterializeResult(
        metadata={
            "report": dg.MetadataValue.md(report_markdown(q)),
            "quality_score": q.quality_score,
            "rows": q.ledger.rows,
            "quarantined_lines": q.ledger.quarantined_lines,
            "quarantine_rate": round(q.quarantine_rate, 6),
            "duplicate_rows": q.ledger.duplicate_rows,
            "duplicate_rate": round(q.duplicate_rate, 6),
            "conflicts": q.directory.conflicts,
            "rescued_rows": q.directory.rescued_rows,
            "schema_changes": len(q.schema_changes),
            "pending_keys": q.ledger.by_status.get("PENDING", 0),
            "failed_keys": q.ledger.by_status.get("FAILED", 0),
        }
    )

"""Analytics on the lake: hourly device statistics (lake + warehouse table) and anomalies."""

from collections.abc import Iterator

import dagster as dg
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.core.analytics import (
    ANOMALIES,
    HOURLY_STATS,
    find_anomalies,
    hourly_stats_sql,
    replace_partition,
    stage_readings,
)
from datalog_platform.core.lake import read_live
from datalog_platform.core.warehouse import load_hourly_stats
from datalog_platform.defs.constants import OWNERS
from datalog_platform.defs.ingest.assets import datalog_parquet
from datalog_platform.defs.partitions import DECLARED_PARTITIONS, date_and_region
from datalog_platform.defs.resources import LedgerResource, StoresResource, WarehouseResource, lake_connection

ROWS_MATCH = "warehouse_rows_match_parquet"


class AnomalyConfig(dg.Config):
    threshold: float = Field(default=3.5, description="Robust z-score above which a reading is an anomaly")
    min_readings: int = Field(default=5, description="Fewest temperature readings a device needs to be scored")


def _lake_uri(stores: StoresResource, dataset: str, day: str, region: str) -> dg.MetadataValue:
    return dg.MetadataValue.path(stores.lake().uri(f"{dataset}/hiveperiod={day}/dstrct_code={region}"))


@dg.asset(
    deps=[datalog_parquet],
    partitions_def=DECLARED_PARTITIONS,
    group_name="analytics",
    kinds={"duckdb", "parquet", "sql"},
    owners=OWNERS,
    tags={"layer": "analytics"},
    check_specs=[
        dg.AssetCheckSpec(
            ROWS_MATCH,
            asset=HOURLY_STATS,
            description="The warehouse table holds as many rows for the partition as its Parquet files",
        )
    ],
)
def hourly_device_stats(
    context: dg.AssetExecutionContext,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
    warehouse: WarehouseResource,
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Per device and local hour: readings, and min / max / avg of temperature, humidity and
    pcv_temperature. Written to the lake and upserted into the warehouse table of the same name,
    keyed (device_id, ymd, hh)."""
    day, region = date_and_region(context.partition_key)
    engine, lake = ledger.get_engine(), stores.lake()
    with lake_connection(duckdb, stores) as conn:
        readings = stage_readings(conn, engine, lake, day, region)
        conn.execute(f"CREATE OR REPLACE TEMP TABLE _dl_hourly AS {hourly_stats_sql()} ORDER BY device_id, hh")
        written = replace_partition(
            conn, engine, lake, HOURLY_STATS, "_dl_hourly", day, region,
            context.run.run_id, ledger.lease_seconds, ledger.max_attempts,
        )  # fmt: skip
        rows = conn.execute("SELECT * FROM _dl_hourly").to_arrow_table().to_pylist()
        loaded = load_hourly_stats(warehouse.get_engine(), day, region, rows)
        parquet_rows = (
            read_live(conn, engine, lake, HOURLY_STATS, "SELECT count(*) FROM live", day, region) or [(0,)]
        )[0][0]
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": written.rows,
            "readings": readings,
            "rows": written.rows,
            "devices": len({r["device_id"] for r in rows}),
            "files_replaced": written.replaced,
            "warehouse_upserted": loaded.upserted,
            "warehouse_deleted": loaded.deleted,
            "path": _lake_uri(stores, HOURLY_STATS, day, region),
        }
    )
    yield dg.AssetCheckResult(
        check_name=ROWS_MATCH,
        passed=loaded.rows_in_table == parquet_rows,
        metadata={
            "partition": context.partition_key,
            "warehouse_rows": loaded.rows_in_table,
            "parquet_rows": int(parquet_rows),
        },
    )


@dg.asset(
    deps=[datalog_parquet],
    partitions_def=DECLARED_PARTITIONS,
    group_name="analytics",
    kinds={"duckdb", "parquet"},
    owners=OWNERS,
    tags={"layer": "analytics"},
)
def device_anomalies(
    context: dg.AssetExecutionContext,
    config: AnomalyConfig,
    ledger: LedgerResource,
    stores: StoresResource,
    duckdb: DuckDBResource,
) -> dg.MaterializeResult:
    """Temperature readings whose robust z-score (median and MAD per device and day) exceeds the
    threshold, with the score and the device's median. Devices with too few readings or a
    constant value are listed in the metadata instead of being scored."""
    day, region = date_and_region(context.partition_key)
    engine, lake = ledger.get_engine(), stores.lake()
    with lake_connection(duckdb, stores) as conn:
        stage_readings(conn, engine, lake, day, region)
        find_anomalies(conn, config.threshold, config.min_readings)
        written = replace_partition(
            conn, engine, lake, ANOMALIES, "_dl_anomalies", day, region,
            context.run.run_id, ledger.lease_seconds, ledger.max_attempts,
        )  # fmt: skip
        unscored = conn.execute("SELECT device_id, readings, reason FROM _dl_unscored").fetchall()
        scored = conn.execute("SELECT count(*) FROM _dl_device_center").fetchone()[0] - len(unscored)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": written.rows,
            "anomalies": written.rows,
            "devices_scored": scored,
            "devices_unscored": len(unscored),
            "unscored": dg.MetadataValue.md(
                "\n".join(
                    ["| device | readings | reason |", "|---|---|---|"]
                    + [f"| {d} | {n} | {reason} |" for d, n, reason in unscored]
                )
            ),
            "threshold": config.threshold,
            "path": _lake_uri(stores, ANOMALIES, day, region),
        }
    )

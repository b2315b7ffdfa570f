"""`build_definitions(settings)`: every asset, check, job, sensor, schedule and resource, wired from one
Settings object (the command line and `datalog_platform.definitions` each build theirs once)."""

from __future__ import annotations

import warnings

import dagster as dg
from dagster_aws.s3 import S3Resource
from dagster_duckdb import DuckDBResource

from datalog_platform.core.duckdb_setup import connection_config
from datalog_platform.defs.analytics.assets import device_anomalies, hourly_device_stats
from datalog_platform.defs.analytics.jobs import analytics_job
from datalog_platform.defs.analytics.schedules import daily_analytics_schedule
from datalog_platform.defs.analytics.sensors import stale_analytics_sensor
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.discovery.jobs import reconcile_raw_keys_job
from datalog_platform.defs.discovery.s3_events import s3_events_sensor
from datalog_platform.defs.discovery.schedules import daily_reconciliation_schedule
from datalog_platform.defs.discovery.sensors import raw_logs_sensor
from datalog_platform.defs.ingest.assets import ingest_partition
from datalog_platform.defs.ingest.jobs import ingest_partition_job
from datalog_platform.defs.ingest.schedules import hourly_ingest_schedule
from datalog_platform.defs.ingest.sensors import pending_keys_sensor
from datalog_platform.defs.maintenance.jobs import compact_lake_job
from datalog_platform.defs.maintenance.schedules import daily_compaction_schedule
from datalog_platform.defs.maintenance.sensors import batch_recovery_sensor, expired_lease_sensor
from datalog_platform.defs.partitions import date_region_partitions, with_partitions
from datalog_platform.defs.quality.assets import data_quality_report
from datalog_platform.defs.quality.checks import datalog_parquet_checks
from datalog_platform.defs.registry.assets import device_registry
from datalog_platform.defs.resources import (
    CompactionResource,
    DiscoveryResource,
    LedgerResource,
    QualityResource,
    ReaderResource,
    S3EventsResource,
    StoresResource,
    WarehouseResource,
)
from datalog_platform.settings import Settings


def _secret(settings: Settings, name: str, value: str) -> str | dg.EnvVar:
    """A value that may hold credentials is passed as an EnvVar when it comes from the process
    environment, so that it never shows in the UI; otherwise the value itself."""
    return dg.EnvVar(name) if name in settings.environ_names else value


def _with_code_references(assets: list[dg.AssetsDefinition | dg.AssetSpec]) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """Each asset linked to the lines of code that define it (the UI's code references). Dagster
    1.13 marks them beta; they are used deliberately and exactly their warnings are silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=(
                "(Function `with_source_code_references`|Class `(LocalFileCodeReference|CodeReferencesMetadataValue)`)"
                " is currently in beta"
            ),
            category=dg.BetaWarning,
        )
        return dg.with_source_code_references(assets)


def _warehouse_variable(settings: Settings) -> str:
    """The variable the warehouse URL came from: its own, or the ledger's when it defaults to it."""
    defaulted = "DATALOG_WAREHOUSE_URL" not in settings.environ_names and settings.warehouse_url == settings.ledger_url
    return "DATALOG_LEDGER_URL" if defaulted else "DATALOG_WAREHOUSE_URL"


def _s3_events(settings: Settings) -> tuple[list[dg.SensorDefinition], dict[str, S3EventsResource]]:
    """The notification sensor and its queue, when a queue is configured: without one the sensor
    could only fail, so it is left out rather than offered stopped."""
    if settings.s3_events_queue_url is None:
        return [], {}
    queue = S3EventsResource(queue_url=settings.s3_events_queue_url, region_name=settings.aws_region)
    return [s3_events_sensor], {"s3_events": queue}


def build_definitions(settings: Settings) -> dg.Definitions:
    event_sensors, event_resources = _s3_events(settings)
    return dg.Definitions(
        assets=_with_code_references(
            with_partitions(
                [
                    raw_datalog_logs,
                    device_registry,
                    ingest_partition,
                    hourly_device_stats,
                    device_anomalies,
                    data_quality_report,
                ],
                date_region_partitions(settings.partitions_start_date, settings.tz_offset_hours),
            )
        ),
        asset_checks=[datalog_parquet_checks],
        jobs=[ingest_partition_job, reconcile_raw_keys_job, compact_lake_job, analytics_job],
        sensors=[
            raw_logs_sensor,
            pending_keys_sensor,
            batch_recovery_sensor,
            expired_lease_sensor,
            stale_analytics_sensor,
            *event_sensors,
        ],
        schedules=[
            hourly_ingest_schedule,
            daily_reconciliation_schedule,
            daily_compaction_schedule,
            daily_analytics_schedule(settings.tz_offset_hours),
        ],
        resources={
            "ledger": LedgerResource(
                url=_secret(settings, "DATALOG_LEDGER_URL", settings.ledger_url),
                key_limit_per_run=settings.key_limit_per_run,
                batch_mb=settings.batch_mb,
                lease_seconds=settings.lease_seconds,
                max_attempts=settings.max_attempts,
                tz_offset_hours=settings.tz_offset_hours,
                max_runs_per_tick=settings.max_runs_per_tick,
                partitions_start_date=settings.partitions_start_date,
                rewrite_policy=settings.rewrite_policy,
            ),
            "reader": ReaderResource(
                ram_limit=settings.ram_limit,
                threads=settings.threads,
                spill_dir=str(settings.spill_dir),
                max_line_size=settings.max_line_size,
                max_fields=settings.max_fields,
            ),
            "discovery": DiscoveryResource(
                max_requests=settings.discovery_max_requests,
                max_keys=settings.discovery_max_keys,
                window_hours=settings.discovery_window_hours,
                cold_requests=settings.discovery_cold_requests,
                prefixes_per_tick=settings.discovery_prefixes_per_tick,
            ),
            "compaction": CompactionResource(
                min_files=settings.compaction_min_files, target_mb=settings.compaction_target_mb
            ),
            "stores": StoresResource(
                raw_url=settings.raw_url,
                lake_url=settings.lake_url,
                s3=S3Resource(region_name=settings.aws_region, endpoint_url=settings.s3_endpoint_url),
            ),
            "warehouse": WarehouseResource(
                url=_secret(settings, _warehouse_variable(settings), settings.warehouse_url)
            ),
            "quality": QualityResource(
                quarantine_warn_rate=settings.quarantine_warn_rate,
                quarantine_fail_rate=settings.quarantine_fail_rate,
                pending_max_age_minutes=settings.pending_max_age_minutes,
            ),
            "duckdb": DuckDBResource(
                database=":memory:",
                connection_config=connection_config(settings.ram_limit, settings.threads, settings.spill_dir),
            ),
            **event_resources,
        },
    )

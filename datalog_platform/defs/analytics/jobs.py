"""The daily analytics of one partition, with the checks of `datalog_parquet`."""

import dagster as dg

from datalog_platform.defs.analytics.assets import device_anomalies, hourly_device_stats
from datalog_platform.defs.ingest.assets import datalog_parquet

analytics_job = dg.define_asset_job(
    "analytics_job",
    selection=dg.AssetSelection.assets(hourly_device_stats, device_anomalies, "data_quality_report")
    | dg.AssetSelection.checks_for_assets(datalog_parquet.key),
    description="Statistics, anomalies, the quality report and the checks of one date x region partition.",
)

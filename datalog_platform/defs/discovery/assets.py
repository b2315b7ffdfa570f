"""The raw logs in the object store: an external asset, observed by `raw_logs_sensor`."""

import dagster as dg

from datalog_platform.defs.constants import OWNERS

raw_datalog_logs = dg.AssetSpec(
    "raw_datalog_logs",
    description="Raw NDJSON telemetry uploaded by edge devices: {device}/{YYYYMMDDHH}/*.json[.gz].",
    group_name="raw",
    kinds={"s3", "json"},
    owners=OWNERS,
    tags={"layer": "raw"},
)

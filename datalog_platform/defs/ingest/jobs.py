"""The job that sensors, schedules and `datalog ingest` launch for one partition."""

import dagster as dg

from datalog_platform.defs.ingest.assets import claimed_key_batches, datalog_parquet

ingest_partition_job = dg.define_asset_job(
    "ingest_partition_job",
    selection=[claimed_key_batches.key, datalog_parquet.key],
    description=(
        "Claim up to key_limit_per_run pending keys of one date x region partition and ingest them "
        "(a rebuild when launched by a person)."
    ),
)

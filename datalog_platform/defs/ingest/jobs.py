"""The job that sensors, schedules and `datalog ingest` launch for one partition."""

import dagster as dg

from datalog_platform.defs.ingest.assets import claimed_key_batches, datalog_parquet

# In one process: the run worker executes the ingest step and then the checks itself instead of
# starting a process per step that imports Dagster and the code location again (about 3 s each on 2
# cores, most of a small run's time from upload to commit).
ingest_partition_job = dg.define_asset_job(
    "ingest_partition_job",
    selection=[claimed_key_batches.key, datalog_parquet.key],
    executor_def=dg.in_process_executor,
    description=(
        "Claim up to key_limit_per_run pending keys of one date x region partition and ingest them "
        "(a rebuild when launched by a person)."
    ),
)

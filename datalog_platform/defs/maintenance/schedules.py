"""Once a day, the compaction."""

import dagster as dg

from datalog_platform.defs.maintenance.jobs import compact_lake_job

# RUNNING by default: without it, hourly ingest leaves 24 files a day in every directory.
daily_compaction_schedule = dg.ScheduleDefinition(
    name="daily_compaction_schedule",
    job=compact_lake_job,
    cron_schedule="30 4 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day, rewrite directories with more than DATALOG_COMPACTION_MIN_FILES files into few.",
)

"""Once a day, the reconciliation."""

import dagster as dg

from datalog_platform.defs.discovery.jobs import reconcile_raw_keys_job

# RUNNING by default: this is the guarantee behind "no key is ever missed", and it costs one full
# listing a day (one request per 1,000 objects).
daily_reconciliation_schedule = dg.ScheduleDefinition(
    name="daily_reconciliation_schedule",
    job=reconcile_raw_keys_job,
    cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day, list the whole raw store and register what discovery missed.",
)

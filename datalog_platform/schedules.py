"""The old DAG's hourly cadence (the same run requests as the pending-keys sensor, once an hour),
and the daily analytics of the local date that just ended."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from datalog_platform.assets.analytics import analytics_job
from datalog_platform.assets.ingest import ingest_partition_job
from datalog_platform.core.ledger.stats import regions_with_keys
from datalog_platform.partitions import REGION_PARTITIONS_NAME, partition_key
from datalog_platform.resources.ledger import LedgerResource
from datalog_platform.sensors.pending import backlog_runs
from datalog_platform.settings import Settings


@dg.schedule(
    cron_schedule="0 * * * *",
    job=ingest_partition_job,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description=(
        "Hourly, one ingest run per date x region partition with pending keys (the Airflow DAG's "
        "cadence); an alternative to pending_keys_sensor, stopped by default."
    ),
)
def hourly_ingest_schedule(
    context: dg.ScheduleEvaluationContext, ledger: LedgerResource
) -> list[dg.RunRequest] | dg.SkipReason:
    scheduled = context.scheduled_execution_time
    plan = backlog_runs(
        context.instance,
        ledger.get_engine(),
        "hourly_ingest_schedule",
        Settings.from_env().max_runs_per_tick,
        # A new hour may retry a backlog whose run failed before it claimed anything.
        run_key_prefix=f"{scheduled.isoformat()}:" if scheduled else "",
        skip_already_run=False,
    )
    if not plan.run_requests:
        return dg.SkipReason(plan.skip_reason())
    if plan.new_regions:
        # Schedules cannot return dynamic partition requests; add the regions before the runs.
        context.instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, plan.new_regions)
    context.log.info(plan.summary())
    return plan.run_requests


# 01:30 local time, whatever the configured offset from UTC.
_ANALYTICS_HOUR_UTC = (1 - Settings.from_env().tz_offset_hours) % 24


@dg.schedule(
    cron_schedule=f"30 {_ANALYTICS_HOUR_UTC} * * *",
    job=analytics_job,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=(
        "At 01:30 local time, statistics, anomalies, quality report and checks of the previous "
        "local date, one run per region with keys that day."
    ),
)
def daily_analytics_schedule(
    context: dg.ScheduleEvaluationContext, ledger: LedgerResource
) -> list[dg.RunRequest] | dg.SkipReason:
    local = context.scheduled_execution_time + timedelta(hours=ledger.tz_offset_hours)
    day = (local - timedelta(days=1)).strftime("%Y-%m-%d")
    regions = regions_with_keys(ledger.get_engine(), day)
    if not regions:
        return dg.SkipReason(f"no keys of {day}")
    return [
        dg.RunRequest(run_key=f"analytics:{day}:{region}", partition_key=partition_key(day, region))
        for region in regions
    ]

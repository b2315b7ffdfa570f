"""The old DAG's hourly cadence: the same run requests as the pending-keys sensor, once an hour."""

from __future__ import annotations

import dagster as dg

from datalog_platform.defs.ingest.jobs import ingest_partition_job
from datalog_platform.defs.ingest.sensors import backlog_runs
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME
from datalog_platform.defs.resources import LedgerResource


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
        ledger.max_runs_per_tick,
        ledger.date_range(),
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

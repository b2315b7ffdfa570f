"""The daily analytics of the local date that just ended."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from datalog_platform.core.ledger.stats import regions_with_keys
from datalog_platform.defs.analytics.jobs import analytics_job
from datalog_platform.defs.partitions import local_zone, partition_key
from datalog_platform.defs.resources import LedgerResource


def daily_analytics_schedule(tz_offset_hours: int) -> dg.ScheduleDefinition:
    """01:30 local time (UTC + `tz_offset_hours`, the offset the ledger and the partitions use)."""

    @dg.schedule(
        name="daily_analytics_schedule",
        cron_schedule="30 1 * * *",
        execution_timezone=local_zone(tz_offset_hours),
        job=analytics_job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            "At 01:30 local time, statistics, anomalies, quality report and checks of the previous "
            "local date, one run per region with keys that day."
        ),
    )
    def schedule(context: dg.ScheduleEvaluationContext, ledger: LedgerResource) -> list[dg.RunRequest] | dg.SkipReason:
        day = (context.scheduled_execution_time.date() - timedelta(days=1)).isoformat()
        regions = regions_with_keys(ledger.get_engine(), day)
        if not regions:
            return dg.SkipReason(f"no keys of {day}")
        return [
            dg.RunRequest(run_key=f"analytics:{day}:{region}", partition_key=partition_key(day, region))
            for region in regions
        ]

    return schedule

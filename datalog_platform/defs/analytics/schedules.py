"""The daily analytics of the local date that just ended."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from datalog_platform.core.ledger.stats import regions_with_keys
from datalog_platform.defs.analytics.jobs import analytics_job
from datalog_platform.defs.partitions import partition_key
from datalog_platform.defs.resources import LedgerResource
from datalog_platform.settings import Settings

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

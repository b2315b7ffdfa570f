"""Analytics that follow their rows: a date whose rows changed after its analytics were computed is
computed again."""

from __future__ import annotations

import dagster as dg

from datalog_platform.core.analytics import stale_partitions
from datalog_platform.defs.analytics.jobs import analytics_job
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.partitions import partition_key
from datalog_platform.defs.resources import LedgerResource


@dg.sensor(
    job=analytics_job,
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests analytics_job for every date before today's and region whose rows changed after its analytics "
        "were computed (a rewritten object re-ingested, late objects, a rebuild), once per change, at most "
        "DATALOG_MAX_RUNS_PER_TICK at a time."
    ),
)
def stale_analytics_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource
) -> dg.SensorResult | dg.SkipReason:
    _, today = ledger.date_range()
    stale = stale_partitions(ledger.get_engine(), today)
    if not stale:
        return dg.SkipReason(f"the analytics of every date before {today} were computed after its rows last changed")
    chosen = stale[: ledger.max_runs_per_tick]
    context.log.info(
        f"{len(stale)} partition(s) changed after their analytics were computed; requesting {len(chosen)}: "
        + ", ".join(f"{p.day}|{p.region}" for p in chosen)
    )
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"analytics:{p.day}:{p.region}:{p.changed_at.isoformat()}",
                partition_key=partition_key(p.day, p.region),
                tags={TRIGGER_TAG: "stale_analytics_sensor"},
            )
            for p in chosen
        ]
    )

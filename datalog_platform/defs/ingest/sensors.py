"""One run of `ingest_partition_job` per date x region partition with pending keys.

The backlog comes from the ledger; a run key names the partition and the fingerprint of its pending
keys, so the same backlog is requested once, and new keys (or keys handed back by a failed run)
request it again. The hourly schedule shares `backlog_runs`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from datalog_platform.core.backlog import ingestible_backlog
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.ingest.jobs import ingest_partition_job
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME, partition_key, region_partitions
from datalog_platform.defs.resources import LedgerResource

# "{partition}:{fingerprint}" on every run requested for a backlog, by the sensor or the schedule.
BACKLOG_TAG = "datalog/backlog"
PARTITION_TAG = "dagster/partition"
IN_PROGRESS_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
_TAG_QUERY_CHUNK = 500


@dataclass(frozen=True)
class BacklogRuns:
    """What one evaluation decided: the runs to request and why other partitions got none."""

    run_requests: list[dg.RunRequest]
    new_regions: list[str]  # regions of requested runs that are not yet dynamic partitions
    in_progress: list[str]  # partitions skipped: a run of the job is queued or running for them
    already_requested: list[str]  # partitions whose exact backlog already had a run
    deferred: int  # partitions left for a later evaluation by the per-evaluation cap
    max_runs: int
    out_of_range_keys: int  # pending keys dated outside the date partitions

    def summary(self) -> str:
        parts = [f"requested {len(self.run_requests)} run(s)"]
        if self.deferred:
            parts.append(f"{self.deferred} more partition(s) wait for a later tick (at most {self.max_runs} per tick)")
        if self.in_progress:
            parts.append(f"{len(self.in_progress)} partition(s) already have a run in progress")
        if self.already_requested:
            parts.append(
                f"{len(self.already_requested)} partition(s) already had a run for the same pending keys "
                "(their keys stay PENDING until new keys arrive or the keys are requeued)"
            )
        if self.out_of_range_keys:
            parts.append(
                f"{self.out_of_range_keys} pending key(s) are dated outside the date partitions "
                "(DATALOG_PARTITIONS_START_DATE .. the last date partition) and are not ingested"
            )
        return "; ".join(parts)

    def skip_reason(self) -> str:
        if not (self.in_progress or self.already_requested):
            reason = "no pending keys in any date x region partition"
            if self.out_of_range_keys:
                reason += (
                    f"; {self.out_of_range_keys} pending key(s) are dated outside the date partitions "
                    "(DATALOG_PARTITIONS_START_DATE .. the last date partition)"
                )
            return reason
        return "nothing to request: " + self.summary().removeprefix("requested 0 run(s); ")


def _partitions_in_progress(instance: dg.DagsterInstance) -> set[str]:
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=ingest_partition_job.name, statuses=IN_PROGRESS_STATUSES))
    return {run.tags[PARTITION_TAG] for run in runs if PARTITION_TAG in run.tags}


def _backlogs_already_run(instance: dg.DagsterInstance, backlogs: Iterable[str]) -> set[str]:
    wanted = sorted(backlogs)
    found: set[str] = set()
    for start in range(0, len(wanted), _TAG_QUERY_CHUNK):
        chunk = wanted[start : start + _TAG_QUERY_CHUNK]
        runs = instance.get_runs(filters=dg.RunsFilter(job_name=ingest_partition_job.name, tags={BACKLOG_TAG: chunk}))
        found.update(run.tags[BACKLOG_TAG] for run in runs)
    return found


def backlog_runs(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    trigger: str,
    max_runs: int,
    dates: tuple[str, str],
    run_key_prefix: str = "",
    skip_already_run: bool = True,
) -> BacklogRuns:
    """Run requests for the partitions with pending keys dated within `dates` (the first and the
    last date partition), oldest date first, at most `max_runs`.

    Partitions with a queued or running run are skipped (that run claims their keys). With
    `skip_already_run`, so is a backlog that already had a run: a run that failed before claiming
    leaves the same fingerprint, and requesting it again each tick would only fill the cap.
    """
    backlog, out_of_range_keys = ingestible_backlog(engine, *dates)
    busy = _partitions_in_progress(instance)
    # partition key -> (backlog id "{partition}:{fingerprint}", pending keys), oldest date first
    parts = {
        str(partition_key(p.part_date, p.dstrct_code)): (
            f"{partition_key(p.part_date, p.dstrct_code)}:{p.fingerprint}",
            p.keys,
        )
        for p in backlog
    }
    done = _backlogs_already_run(instance, (b for b, _ in parts.values())) if skip_already_run else set()
    in_progress = [key for key in parts if key in busy]
    already = [key for key, (b, _) in parts.items() if key not in busy and b in done]
    todo = [key for key, (b, _) in parts.items() if key not in busy and b not in done]
    chosen = todo[:max_runs]
    requests = [
        dg.RunRequest(
            run_key=f"{run_key_prefix}{parts[key][0]}",
            partition_key=key,
            tags={TRIGGER_TAG: trigger, BACKLOG_TAG: parts[key][0], "datalog/pending_keys": str(parts[key][1])},
        )
        for key in chosen
    ]
    known = set(instance.get_dynamic_partitions(REGION_PARTITIONS_NAME))
    regions = sorted({key.split("|", 1)[1] for key in chosen})
    return BacklogRuns(
        run_requests=requests,
        new_regions=[r for r in regions if r not in known],
        in_progress=in_progress,
        already_requested=already,
        deferred=len(todo) - len(chosen),
        max_runs=max_runs,
        out_of_range_keys=out_of_range_keys,
    )


@dg.sensor(
    job=ingest_partition_job,
    # Cheap (the ledger's key counts and the instance's runs): a registered key waits 5 s on average.
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Requests one ingest run per date x region partition with pending keys in the ledger "
        "(at most DATALOG_MAX_RUNS_PER_TICK per tick), skipping partitions with a run in progress."
    ),
)
def pending_keys_sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource) -> dg.SensorResult | dg.SkipReason:
    plan = backlog_runs(
        context.instance, ledger.get_engine(), "pending_keys_sensor", ledger.max_runs_per_tick, ledger.date_range()
    )
    if not plan.run_requests:
        return dg.SkipReason(plan.skip_reason())
    context.log.info(plan.summary())
    return dg.SensorResult(
        run_requests=plan.run_requests,
        dynamic_partitions_requests=[region_partitions.build_add_request(plan.new_regions)] if plan.new_regions else [],
    )

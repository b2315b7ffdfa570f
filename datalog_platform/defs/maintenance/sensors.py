"""Abort, at once, the batches a failed run left WRITING (instead of waiting for their lease)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

from datalog_platform.core.ledger import protocol, stats
from datalog_platform.defs.ingest.jobs import ingest_partition_job
from datalog_platform.defs.resources import LedgerResource, StoresResource

if TYPE_CHECKING:
    from dagster_shared.error import SerializableErrorInfo


def _root_cause(error: SerializableErrorInfo) -> str:
    # Dagster wraps the step's own exception in DagsterExecutionStepExecutionError; keep the cause.
    while error.cause is not None:
        error = error.cause
    return f"{error.cls_name}: {error.message.strip()}"


def run_failure_text(context: dg.RunFailureSensorContext) -> str:
    """Why the run failed, as the keys' `error` shows it: each failed step's error, else the run's."""
    steps = [
        f"{event.step_key}: {_root_cause(event.step_failure_data.error)}"
        for event in context.get_step_failure_events()
        if event.step_failure_data.error is not None
    ]
    reason = "; ".join(steps) or context.failure_event.message or "run failed"
    return f"run {context.dagster_run.run_id} failed: {reason}"


@dg.run_failure_sensor(
    monitored_jobs=[ingest_partition_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "When an ingest run fails, aborts the batches it left WRITING: their files are deleted and "
        "their keys go back to PENDING (attempts + 1; FAILED past DATALOG_MAX_ATTEMPTS)."
    ),
)
def batch_recovery_sensor(
    context: dg.RunFailureSensorContext, ledger: LedgerResource, stores: StoresResource
) -> dg.SkipReason | None:
    run_id = context.dagster_run.run_id
    engine = ledger.get_engine()
    writing = stats.writing_batches_of_run(engine, run_id)
    if not writing:
        # The usual case: the run aborted its own batch before failing, or never claimed one.
        return dg.SkipReason(f"run {run_id} left no WRITING batch")
    error = run_failure_text(context)
    lake = stores.lake()
    aborted = [b for b in writing if protocol.abort_batch(engine, lake, b, error, ledger.max_attempts)]
    context.log.warning(
        f"run {run_id} failed with {len(writing)} batch(es) still WRITING; aborted {aborted} "
        "(files deleted, keys handed back)"
    )
    return None


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Takes over batches whose writer stopped renewing its lease (a killed or crashed process): "
        "their files are deleted and their keys go back to PENDING, whether or not another run starts."
    ),
)
def expired_lease_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource, stores: StoresResource
) -> dg.SkipReason:
    engine = ledger.get_engine()
    recovered = protocol.recover_expired(engine, stores.lake(), ledger.max_attempts)
    if not recovered:
        return dg.SkipReason("no batch with a lapsed lease")
    context.log.warning(f"took over {len(recovered)} batch(es) whose lease lapsed: {recovered}")
    # A writer that died with its whole process tree (daemon restart, OOM kill) leaves its run
    # STARTED for ever; as in progress it would hold its partition back from every later run.
    orphaned = []
    for run_id in sorted(stats.runs_of_batches(engine, recovered)):
        run = context.instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            context.instance.report_run_failed(
                run, message="its batch's lease lapsed: the writer stopped; keys handed back to PENDING"
            )
            orphaned.append(run_id)
    note = f"; marked {len(orphaned)} orphaned run(s) failed" if orphaned else ""
    return dg.SkipReason(f"recovered {len(recovered)} batch(es) whose lease lapsed{note}; no run to request")

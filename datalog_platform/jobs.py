"""The daily full reconciliation: list the whole raw store and register what the ledger lacks.

The discovery sensor only re-lists the trailing window; this job is what guarantees that no key is
missed, whatever hour it was filed under and however late it arrived.
"""

import dagster as dg

from datalog_platform.discovery import reconcile
from datalog_platform.ledger.protocol import utcnow
from datalog_platform.resources.ledger import LedgerResource
from datalog_platform.resources.stores import StoresResource
from datalog_platform.sensors.discovery import RAW_ASSET_KEY, backlog_metadata


@dg.op(description="List every object of the raw store and register those the ledger lacks.")
def reconcile_raw_keys(context: dg.OpExecutionContext, ledger: LedgerResource, stores: StoresResource) -> None:
    raw = stores.raw()
    engine = ledger.get_engine()
    found = reconcile(raw, engine, ledger.tz_offset_hours)
    if found.registered:
        context.log.warning(f"reconciliation registered {found.registered} key(s) that discovery had missed")
    context.log_event(
        dg.AssetObservation(
            asset_key=RAW_ASSET_KEY,
            metadata={
                "reconciled": True,
                "keys_listed": found.seen,
                "keys_found": found.registered,
                "bytes_found": found.bytes,
                "keys_unrouted": found.unrouted,
                "objects_ignored": found.ignored,
                "list_requests": raw.list_requests,
                **backlog_metadata(engine, utcnow()),
            },
        )
    )


@dg.job(description="Full listing of the raw store; registers every object the ledger lacks (idempotent).")
def reconcile_raw_keys_job() -> None:
    reconcile_raw_keys()


# RUNNING by default: this is the guarantee behind "no key is ever missed", and it costs one full
# listing a day (one request per 1,000 objects).
daily_reconciliation_schedule = dg.ScheduleDefinition(
    name="daily_reconciliation_schedule",
    job=reconcile_raw_keys_job,
    cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Once a day, list the whole raw store and register what discovery missed.",
)

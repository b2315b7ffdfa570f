"""The reconciliation: a full listing of the raw store, the safety net behind discovery."""

import dagster as dg

from datalog_platform.core.discovery import reconcile
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.versions import rewrite_note
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.discovery.sensors import backlog_metadata
from datalog_platform.defs.resources import LedgerResource, StoresResource


@dg.op(
    description=(
        "List every object of the raw store and register those the ledger lacks, and the new versions of "
        "those it knows."
    )
)
def reconcile_raw_keys(context: dg.OpExecutionContext, ledger: LedgerResource, stores: StoresResource) -> None:
    raw = stores.raw()
    engine = ledger.get_engine()
    found = reconcile(raw, engine, ledger.tz_offset_hours, ledger.rewrite_policy)
    if found.registered:
        context.log.warning(f"reconciliation registered {found.registered} key(s) that discovery had missed")
    if found.new_versions or found.reappeared:
        context.log.warning(
            f"reconciliation found {found.new_versions} object(s) rewritten since their registration and "
            f"{found.reappeared} MISSING object(s) back in the raw store. "
            + rewrite_note(found.rewritten, ledger.rewrite_policy)
        )
    context.log_event(
        dg.AssetObservation(
            asset_key=raw_datalog_logs.key,
            metadata={
                "reconciled": True,
                "keys_listed": found.seen,
                "keys_found": found.registered,
                "keys_rewritten": found.new_versions,
                "keys_reappeared": found.reappeared,
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

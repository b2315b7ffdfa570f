"""`raw_logs_sensor`: one bounded discovery tick, reported as an observation of `raw_datalog_logs`."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from datalog_platform.core.discovery import (
    DiscoveryCursor,
    TickResult,
    discover,
)
from datalog_platform.core.ledger import stats
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.versions import rewrite_note
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.resources import DiscoveryResource, LedgerResource, StoresResource


def backlog_metadata(engine: sa.Engine, now: datetime) -> dict[str, int | float]:
    """Pending keys, how long the oldest has waited since discovery, and keys waiting for the registry."""
    backlog = stats.backlog(engine)
    oldest = backlog.oldest_pending_discovered_at
    return {
        "pending_backlog": backlog.pending,
        "oldest_pending_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
        "unrouted_backlog": backlog.unrouted,
    }


def tick_metadata(result: TickResult) -> dict[str, int | bool | str]:
    return {
        "keys_found": result.registered,
        "keys_rewritten": result.new_versions,
        "keys_reappeared": result.reappeared,
        "bytes_found": result.bytes,
        "keys_unrouted": result.unrouted,
        "keys_listed": result.keys_listed,
        "list_requests": result.list_requests,
        "devices_listed": result.devices_listed,
        "new_devices": len(result.new_devices),
        "hot_devices": result.hot_devices,
        "cold_devices": result.cold_devices,
        "more_to_list": result.more,
    }


@dg.sensor(
    name="raw_logs_sensor",
    # A new object waits 15 s on average for its discovery; the cost is list requests (README).
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Registers new raw objects in the ledger: new devices, devices active in the trailing window "
        "(late keys included) and a few silent devices per tick, within a request and key budget "
        "(DATALOG_DISCOVERY_*). Reports keys found and the pending backlog on raw_datalog_logs "
        "whenever either changed."
    ),
    # Draws the sensor as the automation of the raw asset in the UI; it observes, it launches nothing.
    asset_selection=dg.AssetSelection.assets(raw_datalog_logs.key),
)
def raw_logs_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource, stores: StoresResource, discovery: DiscoveryResource
) -> dg.SensorResult:
    engine = ledger.get_engine()
    result = discover(
        stores.raw(),
        engine,
        DiscoveryCursor.from_json(context.cursor),
        now=utcnow(),
        limits=discovery.limits(),
        tz_offset_hours=ledger.tz_offset_hours,
        policy=ledger.rewrite_policy,
    )
    metadata = {**tick_metadata(result), **backlog_metadata(engine, utcnow())}
    summary = (
        f"{result.registered} new key(s) ({result.bytes} bytes), {result.new_versions} rewritten and "
        f"{result.reappeared} back after missing, from {result.keys_listed} listed in {result.list_requests} "
        f"list request(s); {metadata['pending_backlog']} pending"
    )
    if result.rewritten:
        summary += "; " + rewrite_note(result.rewritten, ledger.rewrite_policy)
    context.log.info(summary + ("; the next tick continues the round" if result.more else ""))
    # An observation only when something changed: new keys, or a backlog other than the last one reported.
    backlog = f"{metadata['pending_backlog']}/{metadata['unrouted_backlog']}"
    found = result.registered + result.new_versions + result.reappeared
    changed = found > 0 or backlog != result.cursor.reported_backlog
    events = [dg.AssetObservation(asset_key=raw_datalog_logs.key, metadata=metadata)] if changed else []
    skip = None if found else f"no new raw objects: {summary}"
    cursor = replace(result.cursor, reported_backlog=backlog)
    return dg.SensorResult(cursor=cursor.to_json(), asset_events=events, skip_reason=skip)

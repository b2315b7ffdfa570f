"""`s3_events_sensor`: the raw bucket's S3 event notifications, drained from SQS into the ledger.

In the definitions only when DATALOG_S3_EVENTS_QUEUE_URL is set, and then RUNNING by default. A
tick registers the keys the events report (the registration discovery uses), deletes the messages
once the ledger committed, requests the ingest runs of partitions with pending keys whenever the
events named raw keys, new ones or keys a listing registered a moment before (the same plan
`pending_keys_sensor` makes, so neither requests a backlog the other already did) and reports
the messages and the queue's depth as an observation of `raw_datalog_logs`. Listing
(`raw_logs_sensor`, the daily reconciliation) keeps running beside it as the safety net.
"""

from __future__ import annotations

import json

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError

from datalog_platform.core.events import DrainResult, QueueDepth, drain_queue, queue_depth, sqs_error
from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.versions import rewrite_note
from datalog_platform.core.store import split_s3_url
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.discovery.sensors import backlog_metadata
from datalog_platform.defs.ingest.jobs import ingest_partition_job
from datalog_platform.defs.ingest.sensors import backlog_runs
from datalog_platform.defs.partitions import region_partitions
from datalog_platform.defs.resources import LedgerResource, S3EventsResource, StoresResource

SENSOR_NAME = "s3_events_sensor"


def drain_metadata(result: DrainResult, depth: QueueDepth | None) -> dict[str, int | float | bool | str]:
    now = utcnow()
    oldest = result.oldest_sent_at
    metadata: dict[str, int | float | bool | str] = {
        "discovered_by": "s3_events",
        "messages_received": result.received,
        "messages_deleted": result.deleted,
        "messages_skipped": result.skipped,
        "messages_malformed": len(result.malformed),
        "messages_delete_failed": result.delete_failed,
        "keys_in_events": result.keys_in_events,
        "keys_found": result.registered,
        "keys_rewritten": result.new_versions,
        "keys_reappeared": result.reappeared,
        "keys_already_known": result.known,
        "keys_unrouted": result.unrouted,
        "objects_ignored": result.ignored,
        "bytes_found": result.bytes,
        # SentTimestamp of the oldest message this tick received (GetQueueAttributes has no age;
        # CloudWatch's ApproximateAgeOfOldestMessage is the queue-wide figure)
        "oldest_message_age_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0.0,
        "more_to_receive": result.budget_reached,
    }
    if depth is not None:
        metadata["queue_messages"] = depth.visible
        metadata["queue_messages_in_flight"] = depth.in_flight
    return metadata


@dg.sensor(
    name=SENSOR_NAME,
    job=ingest_partition_job,
    # Back to back with its 5 s long poll (sensors tick on threads): an event is read within seconds.
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Long-polls the SQS queue of the raw bucket's ObjectCreated events (DATALOG_S3_EVENTS_QUEUE_URL), "
        "registers the keys in the ledger, deletes the messages once registered, and requests the ingest "
        "runs of partitions with pending keys. Malformed messages stay for the queue's dead-letter queue."
    ),
)
def s3_events_sensor(
    context: dg.SensorEvaluationContext, ledger: LedgerResource, stores: StoresResource, s3_events: S3EventsResource
) -> dg.SensorResult | dg.SkipReason:
    engine = ledger.get_engine()
    bucket, prefix = split_s3_url(stores.raw_url)
    client = s3_events.get_client()
    result = drain_queue(
        client,
        s3_events.queue_url,
        engine,
        bucket,
        prefix,
        ledger.tz_offset_hours,
        ledger.rewrite_policy,
        s3_events.limits(),
    )
    for bad in result.malformed:
        context.log.warning(
            f"malformed message {bad.message_id} (received {bad.receive_count} time(s)) left on the queue "
            f"for its redrive policy: {bad.reason}"
        )
    if result.delete_failed:
        context.log.warning(
            f"SQS refused to delete {result.delete_failed} message(s) whose keys are registered: they "
            "come back after their visibility timeout and register nothing new"
        )
    depth = None
    if result.error is None:
        try:
            depth = queue_depth(client, s3_events.queue_url)
        except (BotoCoreError, ClientError) as exc:
            result.error = sqs_error(exc)
    metadata = {**drain_metadata(result, depth), **backlog_metadata(engine, utcnow())}
    summary = (
        f"{result.received} message(s): {result.deleted} deleted, {result.skipped} without a raw key, "
        f"{len(result.malformed)} malformed; {result.registered} new key(s), {result.new_versions} rewritten, "
        f"{result.reappeared} back after missing, {result.known} already known"
    )
    if result.rewritten:
        summary += "; " + rewrite_note(result.rewritten, ledger.rewrite_policy)
    if result.error is not None:
        context.log.error(
            f"S3 events queue {s3_events.queue_url} failed: {result.error}. {summary}. "
            "Listing (raw_logs_sensor, the daily reconciliation) still discovers new objects."
        )
    else:
        context.log.info(summary + ("; more are waiting" if result.budget_reached else ""))

    # An observation when messages came, or when the queue's depth differs from the last one reported.
    reported = json.loads(context.cursor) if context.cursor else {}
    depth_text = f"{depth.visible}/{depth.in_flight}" if depth is not None else reported.get("depth")
    events = []
    if result.received or depth_text != reported.get("depth"):
        events.append(dg.AssetObservation(asset_key=raw_datalog_logs.key, metadata=metadata))
    cursor = json.dumps({"depth": depth_text})

    plan = None
    # Keys a listing registered a moment before their event still get their run from this tick.
    if result.keys_in_events > result.ignored:
        plan = backlog_runs(context.instance, engine, SENSOR_NAME, ledger.max_runs_per_tick, ledger.date_range())
        context.log.info(plan.summary())
    if plan is None or not plan.run_requests:
        if result.error is not None:
            skip = f"S3 events queue failed: {result.error}"
        elif not result.received:
            skip = "no S3 events on the queue"
        else:
            skip = summary + (f"; {plan.skip_reason()}" if plan is not None else "")
        return dg.SensorResult(cursor=cursor, asset_events=events, skip_reason=skip)
    return dg.SensorResult(
        cursor=cursor,
        asset_events=events,
        run_requests=plan.run_requests,
        dynamic_partitions_requests=[region_partitions.build_add_request(plan.new_regions)] if plan.new_regions else [],
    )

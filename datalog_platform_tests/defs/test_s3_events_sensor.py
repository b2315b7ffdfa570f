"""`s3_events_sensor`: the raw bucket's event notifications, from a real SQS queue into the ledger.

Each test configures a real bucket notification (S3 -> SQS, and SNS / EventBridge -> SQS) on moto's
server, uploads objects and evaluates the sensor. Covers: upload -> event -> registration, with
the ingest runs requested in the same tick and the messages deleted afterwards (the test event
and keys outside the raw prefix skipped and deleted too); a key with a space and a quote
registered exactly as uploaded; duplicate and out-of-order events registering a key once; a
rewrite reported by an event replacing the key's rows, and two events of one key out of order
(the newer by `sequencer` wins);
poison messages (not JSON, a foreign event) counted and left on the queue while the good ones
beside them are processed; SNS-wrapped and EventBridge deliveries; a lost event (no
notification) whose key the reconciliation job registers; an unreachable or missing queue
reported by the tick while listing (`raw_logs_sensor`) still registers new keys; and the sensor
being in the definitions only when the queue is configured.

Real parts only: moto's server on 127.0.0.1 over HTTP (S3, SQS, SNS, EventBridge), the ledger on
SQLite and, for registration and duplicates, also on the PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (conftest's `ledger_url`), a real
ephemeral Dagster instance; the sensors are evaluated with Dagster's own context builder and the
reconciliation job runs in process.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_aws.s3 import S3Resource

from datalog_platform.core.ingest import ingest_batch
from datalog_platform.core.ledger import protocol, raw_keys, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import PENDING
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.discovery.jobs import reconcile_raw_keys_job
from datalog_platform.defs.discovery.s3_events import s3_events_sensor
from datalog_platform.defs.discovery.sensors import raw_logs_sensor
from datalog_platform.defs.resources import DiscoveryResource, LedgerResource, S3EventsResource, StoresResource
from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings
from datalog_platform_tests.support.lake import lake_rows
from datalog_platform_tests.support.ledger_helpers import key_rows, key_statuses
from datalog_platform_tests.support.net import free_port
from datalog_platform_tests.support.pipeline import reader_for
from datalog_platform_tests.support.raw_data import epoch_seconds, hour_ago, ndjson, raw_key
from datalog_platform_tests.support.s3 import REGION, new_queue, notify_queue, sqs_client_for

TZ = 8
DEVICES = [("dev001", "BRCB"), ("dev A'1", "KPCS")]


@dataclass
class Events:
    """A bucket whose ObjectCreated events go to a fresh queue, its raw store under `raw/`, a ledger
    with DEVICES in the registry, and the sensor's resources."""

    s3: Any
    sqs: Any
    bucket: str
    queue_url: str
    queue_arn: str
    engine: sa.Engine
    resources: dict[str, Any]

    def upload(self, key: str, body: bytes = b'{"heartbeat": 1}\n') -> None:
        """Put an object under the raw prefix (`key` relative to it)."""
        self.s3.put_object(Bucket=self.bucket, Key=f"raw/{key}", Body=body)

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue_url, MessageBody=body)

    def depth(self) -> tuple[int, int]:
        """(messages waiting, messages received and not deleted)."""
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def notified_events(moto_server: str, s3_client: Any, bucket: str, ledger_url: str, lake: Path) -> Events:
    sqs = sqs_client_for(moto_server)
    queue_url, queue_arn = new_queue(sqs)
    notify_queue(s3_client, bucket, queue_arn)
    engine = ledger_engine(ledger_url)
    registration.upsert_devices(engine, DEVICES)
    resources = {
        "ledger": LedgerResource(url=ledger_url, tz_offset_hours=TZ),
        "stores": StoresResource(
            raw_url=f"s3://{bucket}/raw",
            lake_url=str(lake),
            s3=S3Resource(region_name=REGION, endpoint_url=moto_server),
        ),
        "s3_events": S3EventsResource(queue_url=queue_url, region_name=REGION, wait_seconds=0),
        "discovery": DiscoveryResource(),
    }
    return Events(s3_client, sqs, bucket, queue_url, queue_arn, engine, resources)


@pytest.fixture
def events(moto_server: str, s3_client: Any, s3_bucket: str, ledger_url: str, tmp_path: Path) -> Events:
    """Notified events over conftest's `ledger_url`: once on SQLite, once on PostgreSQL."""
    return notified_events(moto_server, s3_client, s3_bucket, ledger_url, tmp_path / "lake")


@pytest.fixture
def sqlite_events(moto_server: str, s3_client: Any, s3_bucket: str, tmp_path: Path) -> Events:
    """Notified events over a SQLite ledger only (the registration path is covered on both by `events`)."""
    return notified_events(moto_server, s3_client, s3_bucket, f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "lake")


def tick(instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None = None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = s3_events_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    return result


def observed(result: dg.SensorResult) -> dict[str, Any]:
    (event,) = result.asset_events
    assert isinstance(event, dg.AssetObservation) and event.asset_key == dg.AssetKey("raw_datalog_logs")
    return {k: v.value for k, v in event.metadata.items()}


def skip_text(result: dg.SensorResult) -> str:
    assert result.skip_reason is not None, result
    return result.skip_reason.skip_message or ""


# ---------------------------------------------------------------------------------------------


def test_upload_event_registration_and_run_request(events: Events, instance: dg.DagsterInstance) -> None:
    """The test event, two uploads (one key with a space and a quote) and objects outside the raw
    prefix or not raw logs: the raw keys are registered exactly as uploaded, their partitions get
    runs in the same tick, and every message is deleted once the ledger committed."""
    hour = hour_ago(1)
    plain, odd = raw_key("dev001", hour), raw_key("dev A'1", hour, "it's a log+1")
    events.upload(plain)
    events.upload(odd)
    events.upload("_registry/devices.csv", b"device_id,dstrct_code\n")  # under the prefix, not a raw log
    events.s3.put_object(Bucket=events.bucket, Key=f"elsewhere/{plain}", Body=b"{}")  # outside the prefix

    result = tick(instance, events.resources)
    meta = observed(result)
    assert meta["messages_received"] == 5 and meta["messages_deleted"] == 5
    assert meta["messages_skipped"] == 2  # the test event and the key outside the prefix
    assert meta["messages_malformed"] == 0
    assert meta["keys_in_events"] == 3 and meta["objects_ignored"] == 1
    assert meta["keys_found"] == 2 and meta["keys_already_known"] == 0
    assert meta["bytes_found"] == 2 * len(b'{"heartbeat": 1}\n')
    assert meta["pending_backlog"] == 2
    assert (meta["queue_messages"], meta["queue_messages_in_flight"]) == (0, 0)
    assert meta["oldest_message_age_seconds"] >= 0
    assert key_statuses(events.engine) == {plain: PENDING, odd: PENDING}
    assert {r["dstrct_code"] for r in key_rows(events.engine).values()} == {"BRCB", "KPCS"}
    date = raw_keys.local_date(hour, TZ)
    requested = {str(r.partition_key): r.tags for r in result.run_requests or []}
    assert set(requested) == {f"{date}|BRCB", f"{date}|KPCS"}
    assert all(tags[TRIGGER_TAG] == "s3_events_sensor" for tags in requested.values())
    assert events.depth() == (0, 0)

    # Nothing new: a skip with a reason, and no observation while the queue's depth stays the same.
    again = tick(instance, events.resources, result.cursor)
    assert skip_text(again) == "no S3 events on the queue" and again.asset_events == []


def test_duplicate_and_out_of_order_events_register_a_key_once(events: Events, instance: dg.DagsterInstance) -> None:
    """The same key uploaded twice, an event replayed after the key was registered, and a key that
    listing registered before its event arrived: one ledger row each, every message deleted."""
    hour = hour_ago(2)
    twice, listed = raw_key("dev001", hour, "twice"), raw_key("dev001", hour, "listed")
    events.upload(listed)
    registration.register_keys(
        events.engine, events.resources["stores"].raw().list(), TZ, REINGEST
    )  # listing came first
    events.upload(twice)
    events.upload(twice, b'{"heartbeat": 2}\n')
    first = observed(tick(instance, events.resources))
    assert first["messages_received"] == 4 and first["messages_deleted"] == 4
    assert first["keys_in_events"] == 2 and first["keys_found"] == 1 and first["keys_already_known"] == 1

    s3 = {"bucket": {"name": events.bucket}, "object": {"key": f"raw/{twice}", "size": 17}}
    events.send(json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}]}))
    second = observed(tick(instance, events.resources))
    assert second["messages_received"] == 1 and second["messages_deleted"] == 1
    assert second["keys_found"] == 0 and second["keys_already_known"] == 1
    assert sorted(key_statuses(events.engine)) == sorted([twice, listed])
    assert events.depth() == (0, 0)


def test_poison_messages_stay_on_the_queue(sqlite_events: Events, instance: dg.DagsterInstance) -> None:
    """A body that is not JSON and a foreign event are counted and left for the redrive policy; the
    good message received with them is registered and deleted, and the tick does not fail."""
    sqlite_events.send("this is not json")
    sqlite_events.send(json.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification"}))
    good = raw_key("dev001", hour_ago(1), "good")
    sqlite_events.upload(good)

    result = tick(instance, sqlite_events.resources)
    meta = observed(result)
    assert meta["messages_received"] == 4  # the two poison messages, the test event, the upload
    assert meta["messages_malformed"] == 2 and meta["messages_deleted"] == 2
    assert meta["keys_found"] == 1
    assert key_statuses(sqlite_events.engine) == {good: PENDING}
    # Not deleted: received and hidden for the visibility timeout, then back for the redrive policy.
    assert sqlite_events.depth() == (0, 2)
    assert meta["queue_messages_in_flight"] == 2


def test_sns_and_eventbridge_deliveries(
    sqlite_events: Events, instance: dg.DagsterInstance, moto_server: str, s3_client: Any
) -> None:
    """S3 -> SNS -> SQS (the notification wrapped in an SNS envelope) and S3 -> EventBridge -> SQS
    (keys not encoded) for the same upload: both read, the key registered once."""
    sns = _client("sns", moto_server)
    topic = sns.create_topic(Name=f"raw-events-{sqlite_events.bucket}")["TopicArn"]
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=sqlite_events.queue_arn)
    bridge = _client("events", moto_server)
    bridge.put_rule(
        Name=sqlite_events.bucket, EventPattern=json.dumps({"source": ["aws.s3"], "detail-type": ["Object Created"]})
    )
    bridge.put_targets(Rule=sqlite_events.bucket, Targets=[{"Id": "raw-events", "Arn": sqlite_events.queue_arn}])
    try:  # the rule sees every bucket of the server: it goes when the test ends
        s3_client.put_bucket_notification_configuration(
            Bucket=sqlite_events.bucket,
            NotificationConfiguration={
                "TopicConfigurations": [{"TopicArn": topic, "Events": ["s3:ObjectCreated:*"]}],
                "EventBridgeConfiguration": {},
            },
        )
        key = raw_key("dev A'1", hour_ago(1), "a b+c")
        sqlite_events.upload(key)
        meta = observed(tick(instance, sqlite_events.resources))
        assert meta["messages_malformed"] == 0 and meta["messages_deleted"] == meta["messages_received"]
        # the direct test event, the SNS-wrapped test event, the upload through SNS and through EventBridge
        assert meta["messages_received"] == 4 and meta["keys_found"] == 1
        assert key_statuses(sqlite_events.engine) == {key: PENDING}
    finally:
        bridge.remove_targets(Rule=sqlite_events.bucket, Ids=["raw-events"])
        bridge.delete_rule(Name=sqlite_events.bucket)


def test_a_lost_event_is_found_by_the_reconciliation(sqlite_events: Events, instance: dg.DagsterInstance) -> None:
    """An upload whose event never reaches the queue delays its key until a listing finds it."""
    notify_queue(sqlite_events.s3, sqlite_events.bucket, "")  # notifications off: the event is lost
    lost = raw_key("dev001", hour_ago(40), "lost")  # older than the trailing window
    sqlite_events.upload(lost)
    result = tick(instance, sqlite_events.resources)
    assert key_statuses(sqlite_events.engine) == {}
    assert observed(result)["keys_found"] == 0  # only the test event of the fixture arrived

    run = reconcile_raw_keys_job.execute_in_process(instance=instance, resources=sqlite_events.resources)
    assert run.success
    assert key_statuses(sqlite_events.engine) == {lost: PENDING}


@pytest.mark.parametrize("queue", ["closed-port", "no-such-queue"])
def test_an_unreachable_queue_is_reported_and_listing_still_works(
    sqlite_events: Events, instance: dg.DagsterInstance, moto_server: str, queue: str
) -> None:
    unreachable = (
        f"http://127.0.0.1:{free_port()}/123456789012/raw-events"
        if queue == "closed-port"
        else f"{moto_server}/123456789012/no-such-queue"
    )
    resources = {
        **sqlite_events.resources,
        "s3_events": S3EventsResource(queue_url=unreachable, region_name=REGION, wait_seconds=0),
    }
    key = raw_key("dev001", hour_ago(1), "listed")
    sqlite_events.upload(key)
    result = tick(instance, resources)
    expected = "EndpointConnectionError" if queue == "closed-port" else "QueueDoesNotExist"
    assert skip_text(result).startswith("S3 events queue failed: ") and expected in skip_text(result)
    assert not result.run_requests and key_statuses(sqlite_events.engine) == {}

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        listed = raw_logs_sensor(context)
    assert isinstance(listed, dg.SensorResult) and listed.skip_reason is None
    assert key_statuses(sqlite_events.engine) == {key: PENDING}


def test_the_sensor_is_defined_only_with_a_queue(tmp_path: Path) -> None:
    base = {"DATALOG_HOME": str(tmp_path), "DATALOG_RAW_URL": "s3://raw-bucket/logs"}
    without = build_definitions(Settings.from_env(base))
    assert "s3_events_sensor" not in {s.name for s in without.sensors or []}
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events"
    built = build_definitions(Settings.from_env({**base, "DATALOG_S3_EVENTS_QUEUE_URL": url}))
    sensor = built.resolve_sensor_def("s3_events_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == "ingest_partition_job"
    assert built.resources["s3_events"].queue_url == url


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, region_name=REGION, endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


# ---------------------------------------------------------------------------------------------
# New versions of known keys


def ingest_partition_of(events: Events, part_date: str, region: str) -> None:
    """Claim and ingest the partition's pending keys as its run would."""
    stores = events.resources["stores"]
    batch = protocol.claim_batch(events.engine, part_date, region, 100, None, 60)
    assert batch is not None
    raw = stores.raw()
    ingest_batch(events.engine, reader_for(raw), raw, stores.lake(), batch, TZ, 60, 3, REINGEST)


def test_a_rewrite_reported_by_an_event_replaces_the_keys_rows(
    sqlite_events: Events, instance: dg.DagsterInstance
) -> None:
    """An object uploaded, ingested, then uploaded again with more lines: the second event is a new
    version, the tick requests a run of its partition under a new run key, and the lake ends with
    the second version's rows only."""
    hour = hour_ago(1)
    key = raw_key("dev001", hour)
    date = raw_keys.local_date(hour, TZ)
    lines = [json.dumps({"heartbeat": epoch_seconds(hour) + s, "seq": s}) for s in range(30)]
    sqlite_events.upload(key, ndjson(*lines[:10]))
    first = tick(instance, sqlite_events.resources)
    ingest_partition_of(sqlite_events, date, "BRCB")

    sqlite_events.upload(key, ndjson(*lines))
    second = tick(instance, sqlite_events.resources)
    meta = observed(second)
    assert (meta["keys_found"], meta["keys_rewritten"], meta["keys_already_known"]) == (0, 1, 0)
    (request,) = second.run_requests or []
    (before,) = first.run_requests or []
    assert str(request.partition_key) == f"{date}|BRCB" and request.run_key != before.run_key
    ingest_partition_of(sqlite_events, date, "BRCB")

    lake = sqlite_events.resources["stores"].lake_url
    seqs = sorted(r["seq"] for r in lake_rows(lake))
    assert seqs == list(range(30))
    assert key_rows(sqlite_events.engine)[key]["version"] == 2


def test_two_events_of_one_key_out_of_order(sqlite_events: Events, instance: dg.DagsterInstance) -> None:
    """S3 orders the events of one key by their `sequencer` (moto's carry none, so these are
    built as S3 sends them): an event older than the version recorded changes nothing, a newer
    one is a new version, and of two in one receive the newer counts."""
    key = raw_key("dev001", hour_ago(3))

    def event(etag: str, size: int, sequencer: str) -> str:
        obj = {"key": f"raw/{key}", "size": size, "eTag": etag, "sequencer": sequencer}
        s3 = {"bucket": {"name": sqlite_events.bucket}, "object": obj}
        return json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": s3}]})

    def recorded() -> tuple[str, int, int]:
        row = key_rows(sqlite_events.engine)[key]
        return row["etag"], row["size"], row["version"]

    sqlite_events.send(event("new", 20, "0062D3F0A1B2C3D4E2"))
    assert observed(tick(instance, sqlite_events.resources))["keys_found"] == 1
    sqlite_events.send(event("old", 10, "0062D3F0A1B2C3D4E1"))  # delivered late
    late = observed(tick(instance, sqlite_events.resources))
    assert (late["keys_rewritten"], late["keys_already_known"]) == (0, 1)
    assert recorded() == ("new", 20, 1)

    sqlite_events.send(event("newest", 30, "0062D3F0A1B2C3D4E4"))
    sqlite_events.send(event("newer", 25, "62D3F0A1B2C3D4E3"))  # shorter text, older event
    both = observed(tick(instance, sqlite_events.resources))
    assert both["keys_rewritten"] == 1
    assert recorded() == ("newest", 30, 2)

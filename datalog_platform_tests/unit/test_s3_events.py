"""S3 event notifications as plain logic: SQS message bodies -> raw keys, the endpoint of a queue
URL, and the DATALOG_S3_EVENTS_QUEUE_URL setting.

Covers the three shapes a message takes (an S3 event notification, the same wrapped by SNS, an
EventBridge event), URL-decoding of notification keys (`+` for a space, quotes, a literal `+`)
and none for EventBridge keys, what is skipped (the test event, other event types, other buckets,
keys outside the raw prefix or equal to it) and what is malformed (not JSON, no known shape, a
record without a key). The bodies are those moto's server delivers (see the defs and e2e tests,
which receive them from a real queue).

Real parts only: the functions themselves and `Settings.from_env`; nothing to mock.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from datalog_platform.core.events import MalformedMessage, ParsedMessage, parse_message, queue_endpoint
from datalog_platform.core.store import ObjectInfo
from datalog_platform.settings import Settings, SettingsError

BUCKET, PREFIX = "raw-bucket", "logs/"
SENT = datetime(2026, 1, 2, 3, 4, 5)  # the events' time, naive UTC
SEQ = "0055AED6DCD90281E5"


def notification(key: str, event: str = "ObjectCreated:Put", bucket: str = BUCKET, size: int = 42) -> dict[str, Any]:
    """An S3 event notification as S3 sends it (the key URL-encoded by the caller)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": "2026-01-02T03:04:05.000Z",
                "eventName": event,
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "configurationId": "raw-created",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": key, "size": size, "eTag": "0123abcd", "sequencer": SEQ},
                },
            }
        ]
    }


def eventbridge(key: str, detail_type: str = "Object Created", bucket: str = BUCKET) -> dict[str, Any]:
    return {
        "version": "0",
        "id": "17793124-05d4-b198-2fde-7ededc63b103",
        "detail-type": detail_type,
        "source": "aws.s3",
        "account": "123456789012",
        "region": "us-east-1",
        "time": "2026-01-02T03:04:05Z",
        "resources": [f"arn:aws:s3:::{bucket}"],
        "detail": {
            "version": "0",
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 7, "etag": "feed", "sequencer": "617f08299329d189"},
            "reason": "PutObject",
        },
    }


def sns(inner: dict[str, Any]) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "642d4450-d113-42b3-affb-ca3b2a8fd2b3",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:raw-events",
        "Message": json.dumps(inner),
        "Timestamp": "2026-01-02T03:04:05.000Z",
    }


TEST_EVENT = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": "2026-01-02T03:04:05.000Z", "Bucket": BUCKET}


def parsed(document: Any) -> ParsedMessage:
    return parse_message(json.dumps(document), BUCKET, PREFIX)


def test_notification_keys_are_url_decoded() -> None:
    """`+` is a space, `%2B` a plus, `%27` a quote, `%2F` a slash: the key comes back as uploaded."""
    key = "logs%2Fdev+A%271%2F2026010203%2Fit%27s+a%2Blog.json"
    assert parsed(notification(key)) == ParsedMessage(
        (ObjectInfo("dev A'1/2026010203/it's a+log.json", 42, "0123abcd", last_modified=SENT, sequencer=SEQ),),
        skipped=0,
    )
    assert parsed(notification("logs/dev1/2026010203/log.json", "ObjectCreated:CompleteMultipartUpload")).objects == (
        ObjectInfo("dev1/2026010203/log.json", 42, "0123abcd", last_modified=SENT, sequencer=SEQ),
    )


def test_sns_wraps_the_same_notification() -> None:
    key = "logs/dev+1/2026010203/log.json"
    assert parsed(sns(notification(key))) == parsed(notification(key))
    assert parsed(sns(notification(key))).objects[0].key == "dev 1/2026010203/log.json"
    assert parsed(sns(TEST_EVENT)) == ParsedMessage((), skipped=1)


def test_eventbridge_keys_are_not_encoded() -> None:
    """EventBridge sends the key as it is: a `+` stays a plus, a space a space."""
    result = parsed(eventbridge("logs/dev A'1/2026010203/a+b.json"))
    expected = ObjectInfo("dev A'1/2026010203/a+b.json", 7, "feed", last_modified=SENT, sequencer="617f08299329d189")
    assert result == ParsedMessage((expected,), skipped=0)
    assert parsed(eventbridge("logs/dev1/2026010203/log.json", detail_type="Object Deleted")) == ParsedMessage(
        (), skipped=1
    )


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(TEST_EVENT, id="test-event"),
        pytest.param(notification("logs/dev1/2026010203/log.json", "ObjectRemoved:Delete"), id="removed"),
        pytest.param(notification("logs/dev1/2026010203/log.json", bucket="other-bucket"), id="other-bucket"),
        pytest.param(notification("elsewhere/dev1/2026010203/log.json"), id="outside-prefix"),
        pytest.param(notification("logs%2F"), id="the-prefix-itself"),
        pytest.param(eventbridge("logs/dev1/2026010203/log.json", bucket="other-bucket"), id="eb-other-bucket"),
    ],
)
def test_records_that_are_not_ours_are_skipped(document: dict[str, Any]) -> None:
    assert parsed(document) == ParsedMessage((), skipped=1)


def test_a_message_with_several_records_keeps_ours() -> None:
    records = [
        notification("logs/dev1/2026010203/a.json")["Records"][0],
        notification("logs/dev1/2026010203/b.json", bucket="other-bucket")["Records"][0],
        notification("logs/dev1/2026010203/c.json", "ObjectRemoved:Delete")["Records"][0],
    ]
    result = parsed({"Records": records})
    assert [o.key for o in result.objects] == ["dev1/2026010203/a.json"] and result.skipped == 2


def test_a_bucket_root_store_takes_every_key_of_its_bucket() -> None:
    result = parse_message(json.dumps(notification("dev1/2026010203/log.json")), BUCKET, "")
    assert [o.key for o in result.objects] == ["dev1/2026010203/log.json"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param("this is not json", "not JSON", id="not-json"),
        pytest.param("[1, 2]", "not an object", id="json-array"),
        pytest.param(json.dumps({"hello": "world"}), "not an S3 event", id="unknown-shape"),
        pytest.param(
            json.dumps({"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}}),
            "not an S3 event",
            id="foreign-eventbridge-event",
        ),
        pytest.param(json.dumps({"Records": []}), "Records", id="no-records"),
        pytest.param(
            json.dumps({"Records": [{"eventSource": "aws:sqs", "eventName": "x"}]}), "not an S3", id="foreign-record"
        ),
        pytest.param(
            json.dumps({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put", "s3": {}}]}),
            "bucket.name",
            id="record-without-bucket",
        ),
        pytest.param(json.dumps({"Type": "Notification", "Message": "{oops"}), "not JSON", id="sns-message-not-json"),
        pytest.param(json.dumps(eventbridge("")), "object.key", id="eventbridge-without-key"),
    ],
)
def test_malformed_messages_are_reported_not_guessed(body: str, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason):
        parse_message(body, BUCKET, PREFIX)


def test_a_queue_is_reached_at_its_own_host() -> None:
    assert queue_endpoint("https://sqs.eu-west-1.amazonaws.com/123456789012/raw-events") == (
        "https://sqs.eu-west-1.amazonaws.com",
        "eu-west-1",
    )
    assert queue_endpoint("https://vpce-0a1b-c2d3.sqs.ap-southeast-1.vpce.amazonaws.com/123456789012/q") == (
        "https://vpce-0a1b-c2d3.sqs.ap-southeast-1.vpce.amazonaws.com",
        "ap-southeast-1",
    )
    assert queue_endpoint("http://127.0.0.1:5000/123456789012/raw-events") == ("http://127.0.0.1:5000", None)


def test_queue_url_setting(tmp_path: Path) -> None:
    """Unset: listing only. Set: an SQS queue URL, and the raw store must be on S3."""
    base = {"DATALOG_HOME": str(tmp_path)}
    assert Settings.from_env(base).s3_events_queue_url is None
    url = "https://sqs.us-east-1.amazonaws.com/123456789012/raw-events"
    on_s3 = {**base, "DATALOG_RAW_URL": "s3://raw-bucket/logs"}
    assert Settings.from_env({**on_s3, "DATALOG_S3_EVENTS_QUEUE_URL": url}).s3_events_queue_url == url
    for bad in ("raw-events", "sqs.us-east-1.amazonaws.com/123456789012/raw-events", "https://sqs.amazonaws.com/q"):
        with pytest.raises(SettingsError, match="DATALOG_S3_EVENTS_QUEUE_URL"):
            Settings.from_env({**on_s3, "DATALOG_S3_EVENTS_QUEUE_URL": bad})
    with pytest.raises(SettingsError, match="DATALOG_S3_EVENTS_QUEUE_URL is set, but DATALOG_RAW_URL"):
        Settings.from_env({**base, "DATALOG_S3_EVENTS_QUEUE_URL": url})

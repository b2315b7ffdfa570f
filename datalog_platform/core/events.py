"""S3 event notifications: SQS messages -> raw keys, registered in the ledger, a bounded drain at a time.

The raw bucket sends its `s3:ObjectCreated:*` events to an SQS queue, directly or through SNS or
EventBridge. A message body is one of:

- an S3 event notification, `{"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
  "s3": {"bucket": {"name": ...}, "object": {"key": ..., "size": ..., "eTag": ...}}}]}`, whose keys
  are URL-encoded with `+` for a space;
- S3's test event, `{"Service": "Amazon S3", "Event": "s3:TestEvent", ...}`, sent when a
  notification configuration is saved;
- either of those wrapped by SNS, `{"Type": "Notification", "Message": "<the body as a string>"}`
  (a subscription with raw message delivery sends it unwrapped);
- an EventBridge event, `{"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket":
  {"name": ...}, "object": {"key": ..., "size": ..., "etag": ...}}}`, whose keys are not encoded.

Records that are not ours are skipped: test events, other event types, other buckets, keys outside
the raw store's prefix. A body that is not JSON or has none of these shapes is malformed: it is
counted and left on the queue, whose redrive policy moves it to a dead-letter queue after a few
receives. Every other message is deleted, and only after the ledger committed the registration of
its keys, so a crash in between delivers it again; registration is idempotent, so duplicated and
out-of-order events are harmless. Listing (`discovery`) stays the safety net: a lost event delays
a key until the trailing window or the daily reconciliation lists it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlparse

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from datalog_platform.core.ledger import registration
from datalog_platform.core.store import ObjectInfo, sequence_order

# SQS limits: at most 10 messages per receive and per delete batch, a long poll of at most 20 s.
_RECEIVE_MAX = 10
_DELETE_MAX = 10
MAX_WAIT_SECONDS = 20
# Messages whose keys are registered in one ledger transaction (and then deleted).
_FLUSH_MESSAGES = 100
# The region in an AWS queue URL's host: sqs.REGION.amazonaws.com, REGION.queue.amazonaws.com, and
# VPC endpoints (vpce-....sqs.REGION.vpce.amazonaws.com).
_AWS_REGION = re.compile(r"(?:^|\.)(?P<region>[a-z]{2}(?:-[a-z]+)+-\d)\.(?:queue\.|vpce\.)?amazonaws\.com(?:\.cn)?$")


def queue_endpoint(queue_url: str) -> tuple[str, str | None]:
    """The endpoint that serves `queue_url` (its scheme and host) and, for an AWS URL, its region.
    A queue is always reached at its own host, so an emulator's queue needs no separate endpoint."""
    parsed = urlparse(queue_url)
    match = _AWS_REGION.search(parsed.hostname or "")
    return f"{parsed.scheme}://{parsed.netloc}", match["region"] if match else None


class MalformedMessage(ValueError):
    """A message body the platform cannot read: not JSON, or none of the known shapes."""


@dataclass(frozen=True)
class ParsedMessage:
    """What one message body holds for the raw store."""

    objects: tuple[ObjectInfo, ...]  # created objects, keys relative to the raw prefix
    skipped: int  # records that are not ours: test events, other events, buckets or prefixes


def parse_message(body: str, bucket: str, prefix: str) -> ParsedMessage:
    """The created objects of `bucket` under `prefix` that an SQS message body reports (see the
    module docstring); `MalformedMessage` for a body that is not JSON or of no known shape."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"not JSON ({exc})") from None
    objects: list[ObjectInfo] = []
    skipped = 0
    for event_bucket, key, size, etag, sequencer, at in _created_objects(document):
        if event_bucket is None or event_bucket != bucket or not key.startswith(prefix) or key == prefix:
            skipped += 1
        else:
            objects.append(
                ObjectInfo(key=key[len(prefix) :], size=size, etag=etag, last_modified=at, sequencer=sequencer)
            )
    return ParsedMessage(tuple(objects), skipped)


# (bucket, key, size, etag, sequencer, event time) of a created object; bucket None for a record to skip.
_Record = tuple[str | None, str, int, str | None, str | None, datetime | None]
_SKIP: _Record = (None, "", 0, None, None, None)


def _created_objects(document: Any, wrapped: bool = False) -> Iterator[_Record]:
    if not isinstance(document, dict):
        raise MalformedMessage(f"a JSON {type(document).__name__}, not an object")
    if document.get("Type") == "Notification" and "Message" in document and not wrapped:
        message = document["Message"]
        if not isinstance(message, str):
            raise MalformedMessage("an SNS notification whose Message is not a string")
        try:
            inner = json.loads(message)
        except ValueError as exc:
            raise MalformedMessage(f"an SNS notification whose Message is not JSON ({exc})") from None
        yield from _created_objects(inner, wrapped=True)
    elif document.get("Event") == "s3:TestEvent":
        yield _SKIP
    elif "Records" in document:
        records = document["Records"]
        if not isinstance(records, list) or not records:
            raise MalformedMessage("Records is not a list of S3 event records")
        for record in records:
            yield _notification_record(record)
    elif document.get("source") == "aws.s3" and "detail-type" in document:
        yield _eventbridge_event(document)
    else:
        raise MalformedMessage(f"not an S3 event (fields: {', '.join(sorted(map(str, document))[:8])})")


def _notification_record(record: Any) -> _Record:
    if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
        raise MalformedMessage("a record that is not an S3 event record")
    name = record.get("eventName")
    if not isinstance(name, str):
        raise MalformedMessage("an S3 event record without an eventName")
    if not name.startswith("ObjectCreated:"):
        return _SKIP
    s3 = record.get("s3")
    bucket = _field(s3, "bucket", "name")
    obj = s3.get("object") if isinstance(s3, dict) else None
    key = _field(s3, "object", "key")
    return bucket, unquote_plus(key), _size(obj), _etag(obj, "eTag"), _sequencer(obj), _time(record, "eventTime")


def _eventbridge_event(event: dict[str, Any]) -> _Record:
    if event["detail-type"] != "Object Created":
        return _SKIP
    detail = event.get("detail")
    bucket = _field(detail, "bucket", "name")
    key = _field(detail, "object", "key")
    obj = detail["object"]  # present: _field checked it
    return bucket, key, _size(obj), _etag(obj, "etag", "eTag"), _sequencer(obj), _time(event, "time")


def _field(parent: Any, section: str, name: str) -> str:
    value = parent.get(section) if isinstance(parent, dict) else None
    value = value.get(name) if isinstance(value, dict) else None
    if not isinstance(value, str) or not value:
        raise MalformedMessage(f"an S3 event without {section}.{name}")
    return value


def _size(obj: Any) -> int:
    """The object's size as the event reports it (0 when it does not)."""
    size = obj.get("size") if isinstance(obj, dict) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else 0


def _sequencer(obj: Any) -> str | None:
    """The event's `sequencer`: hexadecimal, larger for a later event of the same key."""
    value = obj.get("sequencer") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value and all(c in "0123456789abcdefABCDEF" for c in value) else None


def _time(parent: Any, name: str) -> datetime | None:
    """An ISO 8601 time of the event (naive UTC), or None."""
    value = parent.get(name) if isinstance(parent, dict) else None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else None
    except ValueError:
        return None
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed and parsed.tzinfo else parsed


def _etag(obj: Any, *names: str) -> str | None:
    for name in names:
        value = obj.get(name) if isinstance(obj, dict) else None
        if isinstance(value, str) and value:
            return value.strip('"')
    return None


# ---------------------------------------------------------------------------------------------
# Draining the queue


@dataclass(frozen=True)
class QueueLimits:
    """How long one drain may wait and work, and how many messages it takes."""

    wait_seconds: int = 5  # long poll of a drain's first receive, while the queue is empty
    max_messages: int = 1000  # most messages received in one drain
    max_seconds: float = 20.0  # no receive starts after this long (well under Dagster's 60 s sensor timeout)
    visibility_timeout: int = 120  # received messages stay hidden this long (covers the drain and its commit)


@dataclass(frozen=True)
class MalformedReport:
    message_id: str
    receive_count: int
    reason: str


@dataclass
class DrainResult:
    received: int = 0
    deleted: int = 0
    skipped: int = 0  # messages deleted without a raw key: test events, other buckets, prefixes or events
    malformed: list[MalformedReport] = field(default_factory=list)  # left on the queue
    delete_failed: int = 0  # deletes SQS refused: the message comes back, and registering it again is harmless
    keys_in_events: int = 0  # distinct keys of the raw store the events reported (per ledger transaction)
    registered: int = 0
    new_versions: int = 0  # known keys the events reported in a new version
    rewritten: int = 0  # of those, keys whose rows the lake holds (the rewrite policy decides)
    reappeared: int = 0  # MISSING keys the events reported again
    unrouted: int = 0
    ignored: int = 0  # keys under the prefix that are not raw log keys (the registry CSV, ...)
    bytes: int = 0
    receives: int = 0
    oldest_sent_at: datetime | None = None  # naive UTC, of the oldest message received
    budget_reached: bool = False  # stopped by max_messages or max_seconds: more may be waiting
    error: str | None = None  # SQS could not be reached or refused a request; the drain stopped there

    @property
    def known(self) -> int:
        """Keys of events that the ledger had already registered (duplicate events, or listing first)."""
        return self.keys_in_events - self.registered - self.ignored - self.new_versions - self.reappeared


@dataclass(frozen=True)
class QueueDepth:
    """GetQueueAttributes: messages waiting, and received but not yet deleted."""

    visible: int
    in_flight: int


def sqs_error(exc: BotoCoreError | ClientError) -> str:
    """A one-line description of an SQS failure (no credentials are ever part of it)."""
    return f"{type(exc).__name__}: {exc}"


def queue_depth(client: Any, queue_url: str) -> QueueDepth:
    attributes = client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    ).get("Attributes", {})
    return QueueDepth(
        int(attributes.get("ApproximateNumberOfMessages", 0)),
        int(attributes.get("ApproximateNumberOfMessagesNotVisible", 0)),
    )


@dataclass
class _Pending:
    receipts: list[str] = field(default_factory=list)
    objects: dict[str, ObjectInfo] = field(default_factory=dict)


def drain_queue(
    client: Any,
    queue_url: str,
    engine: sa.Engine,
    bucket: str,
    prefix: str,
    tz_offset_hours: int,
    policy: str,
    limits: QueueLimits,
) -> DrainResult:
    """Receive messages until the queue is empty or a limit is reached; register the raw keys they
    report, then delete them (malformed ones excepted). `bucket` and `prefix` are the raw store's.

    SQS errors stop the drain and are reported in `error`; what was committed before stays
    committed and deleted. A ledger error propagates, and its messages stay on the queue.
    """
    result = DrainResult()
    deadline = time.monotonic() + limits.max_seconds
    pending = _Pending()
    try:
        while True:
            if result.received >= limits.max_messages or time.monotonic() >= deadline:
                result.budget_reached = True
                break
            # The first receive waits for messages to arrive; later ones only gather what is there
            # (a long poll of 1 s asks every SQS server, a short poll only some).
            wait = limits.wait_seconds if result.receives == 0 else 1
            response = client.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=min(_RECEIVE_MAX, limits.max_messages - result.received),
                WaitTimeSeconds=wait,
                VisibilityTimeout=limits.visibility_timeout,
                MessageSystemAttributeNames=["SentTimestamp", "ApproximateReceiveCount"],
            )
            result.receives += 1
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                _take(message, bucket, prefix, result, pending)
            if len(pending.receipts) >= _FLUSH_MESSAGES:
                _flush(client, queue_url, engine, tz_offset_hours, policy, result, pending)
        _flush(client, queue_url, engine, tz_offset_hours, policy, result, pending)
    except (BotoCoreError, ClientError) as exc:
        result.error = sqs_error(exc)
        if pending.receipts:
            # the messages were received: register their keys, and let delete failures be counted
            _flush(client, queue_url, engine, tz_offset_hours, policy, result, pending, stop_on_error=False)
    return result


def _take(message: dict[str, Any], bucket: str, prefix: str, result: DrainResult, pending: _Pending) -> None:
    result.received += 1
    attributes = message.get("Attributes", {})
    sent = attributes.get("SentTimestamp")
    if sent is not None:
        sent_at = datetime.fromtimestamp(int(sent) / 1000, UTC).replace(tzinfo=None)
        result.oldest_sent_at = min(sent_at, result.oldest_sent_at or sent_at)
    try:
        parsed = parse_message(message.get("Body", ""), bucket, prefix)
    except MalformedMessage as exc:
        count = int(attributes.get("ApproximateReceiveCount", 1))
        result.malformed.append(MalformedReport(message.get("MessageId", "?"), count, str(exc)))
        return
    pending.receipts.append(message["ReceiptHandle"])
    if not parsed.objects:
        result.skipped += 1
    for obj in parsed.objects:
        pending.objects[obj.key] = newer_event(pending.objects.get(obj.key), obj)


def newer_event(known: ObjectInfo | None, event: ObjectInfo) -> ObjectInfo:
    """Of two events of one key in a drain, the later by sequencer (the one received last when
    either has none)."""
    if known is None or not (known.sequencer and event.sequencer):
        return event
    return event if sequence_order(event.sequencer) > sequence_order(known.sequencer) else known


def _flush(
    client: Any,
    queue_url: str,
    engine: sa.Engine,
    tz_offset_hours: int,
    policy: str,
    result: DrainResult,
    pending: _Pending,
    stop_on_error: bool = True,
) -> None:
    """Register the pending keys (committed when this returns), then delete their messages."""
    if pending.objects:
        found = registration.register_keys(engine, pending.objects.values(), tz_offset_hours, policy)
        result.keys_in_events += found.seen
        result.new_versions += found.new_versions
        result.rewritten += found.rewritten
        result.reappeared += found.reappeared
        result.registered += found.registered
        result.unrouted += found.unrouted
        result.ignored += found.ignored
        result.bytes += found.bytes
    receipts, pending.receipts, pending.objects = pending.receipts, [], {}
    try:
        for chunk in _chunks(receipts, _DELETE_MAX):
            response = client.delete_message_batch(
                QueueUrl=queue_url,
                Entries=[{"Id": str(n), "ReceiptHandle": handle} for n, handle in enumerate(chunk)],
            )
            result.deleted += len(response.get("Successful", []))
            result.delete_failed += len(response.get("Failed", []))
    except (BotoCoreError, ClientError):
        if stop_on_error:
            raise


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    return (items[start : start + size] for start in range(0, len(items), size))

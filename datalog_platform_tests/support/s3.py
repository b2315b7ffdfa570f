"""moto's server as the tests speak to it: boto3 clients, DuckDB's access, fresh buckets, and SQS
queues that receive a bucket's event notifications.

Real parts only: HTTP to moto's server on 127.0.0.1 (started by conftest's `moto_server`), which
serves S3 and SQS alike and delivers a bucket's notifications to its queues.
"""

from __future__ import annotations

import uuid
from typing import Any

import boto3

from datalog_platform.core.store import S3Access

REGION = "us-east-1"
# What the process environment holds while moto's server runs, so that nothing reaches real AWS.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


def s3_client_for(endpoint: str) -> Any:
    """A new boto3 S3 client talking HTTP to the moto server at `endpoint`."""
    return boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def sqs_client_for(endpoint: str) -> Any:
    """A new boto3 SQS client talking HTTP to the moto server at `endpoint`."""
    return boto3.client(
        "sqs",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def new_queue(sqs_client: Any) -> tuple[str, str]:
    """A fresh SQS queue with a unique name: (its URL, its ARN)."""
    url = sqs_client.create_queue(QueueName=f"raw-events-{uuid.uuid4().hex}")["QueueUrl"]
    arn = sqs_client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, arn


def notify_queue(s3_client: Any, bucket: str, queue_arn: str) -> None:
    """Send every `s3:ObjectCreated:*` event of `bucket` to the queue (S3 first sends an
    `s3:TestEvent` there); with `queue_arn` empty, send nothing any more."""
    queues = [{"QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"]}] if queue_arn else []
    s3_client.put_bucket_notification_configuration(
        Bucket=bucket, NotificationConfiguration={"QueueConfigurations": queues}
    )


def s3_access(endpoint: str) -> S3Access:
    """DuckDB/httpfs access to the moto server at `endpoint` (path-style, plain http)."""
    return S3Access(region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing")


def new_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket with a unique name."""
    bucket = f"test-{uuid.uuid4().hex}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket

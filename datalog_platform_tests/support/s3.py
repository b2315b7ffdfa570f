"""moto's S3 server as the tests speak to it: boto3 clients, DuckDB's access, fresh buckets.

Real parts only: HTTP to moto's S3 server on 127.0.0.1 (started by conftest's `moto_server`).
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


def s3_access(endpoint: str) -> S3Access:
    """DuckDB/httpfs access to the moto server at `endpoint` (path-style, plain http)."""
    return S3Access(region=REGION, endpoint_url=endpoint, access_key_id="testing", secret_access_key="testing")


def new_bucket(s3_client: Any) -> str:
    """A fresh, empty bucket with a unique name."""
    bucket = f"test-{uuid.uuid4().hex}"
    s3_client.create_bucket(Bucket=bucket)
    return bucket

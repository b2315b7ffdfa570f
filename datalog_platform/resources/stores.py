"""The raw store and the lake as one Dagster resource on top of dagster-aws `S3Resource`."""

import boto3
import dagster as dg
from dagster_aws.s3 import S3Resource
from pydantic import Field

from datalog_platform.core.store import (
    LocalStore,
    ObjectStore,
    S3Access,
    S3Store,
    is_s3_url,
    split_s3_url,
)


def s3_access(s3: S3Resource) -> S3Access:
    """Endpoint and credentials of the S3 resource, resolved the way boto3 resolves them."""
    session = boto3.session.Session(
        aws_access_key_id=s3.aws_access_key_id,
        aws_secret_access_key=s3.aws_secret_access_key,
        aws_session_token=s3.aws_session_token,
        profile_name=s3.profile_name,
        region_name=s3.region_name,
    )
    credentials = session.get_credentials()
    frozen = credentials.get_frozen_credentials() if credentials else None
    return S3Access(
        region=session.region_name or "us-east-1",
        endpoint_url=s3.endpoint_url,
        access_key_id=frozen.access_key if frozen else None,
        secret_access_key=frozen.secret_key if frozen else None,
        session_token=frozen.token if frozen else None,
    )


def open_store(url: str, s3: S3Resource, create: bool = True) -> ObjectStore:
    """The store at `url`; a local directory is made now only with `create` (see `LocalStore`)."""
    if is_s3_url(url):
        bucket, prefix = split_s3_url(url)
        return S3Store(bucket=bucket, prefix=prefix, client=s3.get_client(), access=s3_access(s3))
    return LocalStore(url, create=create)


class StoresResource(dg.ConfigurableResource):
    """Where raw logs are read from and where the lake is written: local directories or S3.

    Example:
        StoresResource(raw_url="s3://raw-bucket/logs", lake_url="s3://lake-bucket", s3=S3Resource())
    """

    raw_url: str = Field(description="Raw NDJSON logs: a local directory or s3://bucket/prefix")
    lake_url: str = Field(description="Parquet lake root: a local directory or s3://bucket/prefix")
    s3: S3Resource = Field(description="S3 client settings (endpoint for MinIO or an emulator)")

    def raw(self) -> ObjectStore:
        """Listing a raw directory that does not exist raises `StoreNotFoundError` (writing creates it)."""
        return open_store(self.raw_url, self.s3, create=False)

    def lake(self) -> ObjectStore:
        return open_store(self.lake_url, self.s3)

    def s3_access(self) -> S3Access | None:
        """DuckDB's S3 settings when either store is on S3."""
        if is_s3_url(self.raw_url) or is_s3_url(self.lake_url):
            return s3_access(self.s3)
        return None

"""The platform's Dagster resources: the ledger, the object stores, the warehouse and the check thresholds."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import dagster as dg
import duckdb
import sqlalchemy as sa
from dagster_aws.s3 import S3Resource
from dagster_duckdb import DuckDBResource
from pydantic import Field

from datalog_platform.core.discovery import DiscoveryLimits
from datalog_platform.core.duckdb_setup import ReaderSettings, enable_s3, memory_bytes
from datalog_platform.core.events import MAX_WAIT_SECONDS, QueueLimits, queue_endpoint
from datalog_platform.core.isolation import start_reader_server
from datalog_platform.core.ledger.engine import database_engine, ledger_engine
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import (
    LocalStore,
    ObjectStore,
    S3Access,
    S3Store,
    is_s3_url,
    split_s3_url,
)
from datalog_platform.core.transform.read import ReadLimits
from datalog_platform.core.transform.timestamps import install_macros
from datalog_platform.core.warehouse import create_warehouse_schema
from datalog_platform.defs.partitions import date_range
from datalog_platform.settings import DEFAULT_MAX_FIELDS, DEFAULT_MAX_LINE_SIZE, DEFAULT_PARTITIONS_START_DATE


class LedgerResource(dg.ConfigurableResource):
    """The SQL ledger that tracks every raw object and batch, and how batches are claimed.

    Example:
        LedgerResource(url=dg.EnvVar("DATALOG_LEDGER_URL"), key_limit_per_run=10_000)
    """

    url: str = Field(description="SQLAlchemy URL: mssql+pymssql://..., postgresql+psycopg2://... or sqlite:///path")
    key_limit_per_run: int = Field(default=10_000, description="Most keys one run claims (DATALOG_KEY_LIMIT_PER_RUN)")
    batch_mb: int = Field(default=1024, description="Most raw MB one run claims (DATALOG_BATCH_MB)")
    lease_seconds: int = Field(
        default=900, description="Lease of a claimed batch; renewed while written, taken over once it lapses"
    )
    max_attempts: int = Field(default=3, description="Failed batches a key survives before it is FAILED")
    tz_offset_hours: int = Field(default=8, description="Local time = UTC + offset (DATALOG_TZ_OFFSET_HOURS)")
    partitions_start_date: str = Field(
        default=DEFAULT_PARTITIONS_START_DATE,
        description="First date partition; keys of older dates wait (DATALOG_PARTITIONS_START_DATE)",
    )
    max_runs_per_tick: int = Field(
        default=20,
        description="Most runs pending_keys_sensor or the hourly schedule requests at once (DATALOG_MAX_RUNS_PER_TICK)",
    )
    rewrite_policy: str = Field(
        default=REINGEST,
        description=(
            "What a new version of an ingested object does: reingest (replace its rows), ignore (keep them) or "
            "quarantine (HELD until `datalog ledger release`) (DATALOG_REWRITE_POLICY)"
        ),
    )

    def get_engine(self) -> sa.Engine:
        return ledger_engine(self.url)

    def date_range(self) -> tuple[str, str]:
        """The first and the last date partition (today's local date)."""
        return date_range(self.partitions_start_date, self.tz_offset_hours)


class DiscoveryResource(dg.ConfigurableResource):
    """How much one tick of `raw_logs_sensor` may list, and how far back it looks for late keys.

    Example:
        DiscoveryResource(max_requests=200, max_keys=50_000, window_hours=6)
    """

    max_requests: int = Field(
        default=200, description="Most list requests in one tick (DATALOG_DISCOVERY_MAX_REQUESTS)"
    )
    max_keys: int = Field(default=50_000, description="Most listed keys in one tick (DATALOG_DISCOVERY_MAX_KEYS)")
    window_hours: int = Field(
        default=6, description="Trailing window of hours re-listed for late keys (DATALOG_DISCOVERY_WINDOW_HOURS)"
    )
    cold_requests: int = Field(
        default=10, description="List requests a tick spends on silent devices (DATALOG_DISCOVERY_COLD_REQUESTS)"
    )
    prefixes_per_tick: int = Field(
        default=10_000, description="New device prefixes scanned in one tick (DATALOG_DISCOVERY_PREFIXES_PER_TICK)"
    )

    def limits(self) -> DiscoveryLimits:
        return DiscoveryLimits(
            max_requests=self.max_requests,
            max_keys=self.max_keys,
            window_hours=self.window_hours,
            cold_requests=self.cold_requests,
            prefixes_per_tick=self.prefixes_per_tick,
        )


class S3EventsResource(dg.ConfigurableResource):
    """The SQS queue that receives the raw bucket's ObjectCreated events, and how long one tick of
    `s3_events_sensor` may poll it. The client reaches the queue at its URL's host, with boto3's
    credential chain (the same as S3's), and gives up quickly when the queue cannot be reached.

    Example:
        S3EventsResource(queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/raw-events")
    """

    queue_url: str = Field(description="SQS queue URL (DATALOG_S3_EVENTS_QUEUE_URL)")
    region_name: str = Field(
        default="us-east-1", description="Region when the queue URL does not name one (AWS_REGION)"
    )
    wait_seconds: int = Field(
        default=5, description=f"Long poll of a tick's first receive while the queue is empty (0 to {MAX_WAIT_SECONDS})"
    )
    max_messages: int = Field(default=1000, description="Most messages one tick receives")
    max_seconds: float = Field(default=20.0, description="No receive starts after this long in one tick")

    def limits(self) -> QueueLimits:
        return QueueLimits(wait_seconds=self.wait_seconds, max_messages=self.max_messages, max_seconds=self.max_seconds)

    def get_client(self) -> Any:
        endpoint, region = queue_endpoint(self.queue_url)
        config = botocore.config.Config(
            connect_timeout=5,
            # a long poll holds the response for up to wait_seconds
            read_timeout=self.wait_seconds + 10,
            retries={"mode": "standard", "max_attempts": 2},
        )
        return boto3.session.Session().client(
            "sqs", region_name=region or self.region_name, endpoint_url=endpoint, config=config
        )


class ReaderResource(dg.ConfigurableResource):
    """How a batch's reader process reads raw files: DuckDB's memory and threads, where it spills,
    and what one file may be. Its DuckDB connection is configured as the `duckdb` resource's is.

    Example:
        ReaderResource(ram_limit="2GB", threads=2, spill_dir=".datalog/tmp/duckdb")
    """

    ram_limit: str = Field(description="RAM limit of a run, reader included (DATALOG_RAM_LIMIT)")
    threads: int = Field(description="DuckDB threads (DATALOG_THREADS)")
    spill_dir: str = Field(description="Where DuckDB spills beyond its memory limit")
    max_line_size: str = Field(
        default=DEFAULT_MAX_LINE_SIZE,
        description="Longest line of a raw file; longer lines are quarantined (DATALOG_MAX_LINE_SIZE)",
    )
    max_fields: int = Field(
        default=DEFAULT_MAX_FIELDS,
        description="Most distinct field names in one raw file; a wider file is quarantined (DATALOG_MAX_FIELDS)",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """A run that reads raw files starts its reader server as it sets up: the server's imports
        go on beside Dagster's own start of the run and the claim."""
        start_reader_server()

    def settings(self, s3: S3Access | None, ram_limit: str | None = None) -> ReaderSettings:
        """The reader's settings, with the run's own RAM limit if it has one; ValueError for a
        size that is not one."""
        limits = ReadLimits(max_line_bytes=memory_bytes(self.max_line_size), max_fields=self.max_fields)
        memory_bytes(ram_limit or self.ram_limit)
        return ReaderSettings(ram_limit or self.ram_limit, self.threads, Path(self.spill_dir), limits, s3)


class CompactionResource(dg.ConfigurableResource):
    """Which hive directories the daily compaction rewrites, and into files of what size.

    Example:
        CompactionResource(min_files=8, target_mb=256)
    """

    min_files: int = Field(
        default=8, description="Compact directories with more files of one partition (DATALOG_COMPACTION_MIN_FILES)"
    )
    target_mb: int = Field(default=256, description="Size of the files written, in MB (DATALOG_COMPACTION_TARGET_MB)")


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


class WarehouseResource(dg.ConfigurableResource):
    """The SQL database the analytics tables are loaded into (MSSQL, PostgreSQL or SQLite).

    Example:
        WarehouseResource(url=dg.EnvVar("DATALOG_WAREHOUSE_URL"))
    """

    url: str = Field(description="SQLAlchemy URL (DATALOG_WAREHOUSE_URL; default: the ledger's database)")

    def get_engine(self) -> sa.Engine:
        engine = database_engine(self.url)
        create_warehouse_schema(engine)
        return engine


class QualityResource(dg.ConfigurableResource):
    """Thresholds of the checks on `datalog_parquet` partitions.

    Example:
        QualityResource(quarantine_warn_rate=0.01, quarantine_fail_rate=0.10, pending_max_age_minutes=180)
    """

    quarantine_warn_rate: float = Field(
        default=0.01, description="Quarantined share of lines above which the check warns"
    )
    quarantine_fail_rate: float = Field(
        default=0.10, description="Quarantined share of lines above which the check fails"
    )
    pending_max_age_minutes: int = Field(
        default=180, description="A PENDING key older than this fails the partition's freshness check"
    )


@contextmanager
def lake_connection(duckdb_resource: DuckDBResource, stores: StoresResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """A run's DuckDB connection with the platform's macros and, for an S3 lake, httpfs."""
    access = stores.s3_access()
    with duckdb_resource.get_connection() as conn:
        install_macros(conn)
        if access is not None:
            enable_s3(conn, access)
        yield conn

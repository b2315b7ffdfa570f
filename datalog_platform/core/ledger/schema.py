"""Ledger tables (SQLAlchemy Core): one schema for MSSQL, PostgreSQL and SQLite."""

from __future__ import annotations

import json
from dataclasses import dataclass

import sqlalchemy as sa

metadata = sa.MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PENDING = "PENDING"
CLAIMED = "CLAIMED"
SUCCESS = "SUCCESS"
FAILED = "FAILED"
QUARANTINED = "QUARANTINED"
UNROUTED = "UNROUTED"
KEY_STATUSES = (PENDING, CLAIMED, SUCCESS, FAILED, QUARANTINED, UNROUTED)

WRITING = "WRITING"
ABORTING = "ABORTING"
COMMITTED = "COMMITTED"
ABORTED = "ABORTED"

# Batch kinds: an ingest of pending keys, a rebuild of a whole partition, a compaction of files,
# a partition of a dataset computed from the lake.
INGEST = "INGEST"
REBUILD = "REBUILD"
COMPACT = "COMPACT"
DERIVE = "DERIVE"

# Lake file states: LIVE files are the dataset; RETIRED ones were replaced and are being deleted.
LIVE = "LIVE"
RETIRED = "RETIRED"

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("device_id", sa.String(255), primary_key=True),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

keys = sa.Table(
    "keys",
    metadata,
    sa.Column("key_id", _BigId, primary_key=True, autoincrement=True),
    # VARCHAR(1024) keeps the unique index within MSSQL's 1,700-byte limit for S3's longest keys.
    sa.Column("key", sa.String(1024), nullable=False, unique=True),
    sa.Column("etag", sa.String(128)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("device_id", sa.String(255), nullable=False),
    sa.Column("key_hour", sa.DateTime, nullable=False),
    sa.Column("dstrct_code", sa.String(64)),
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("batch_id", sa.String(36)),
    # While a rebuild holds a key that was already ingested: its status and batch before, restored
    # if the rebuild aborts.
    sa.Column("prior_status", sa.String(16)),
    sa.Column("prior_batch_id", sa.String(36)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("rows", sa.BigInteger),
    sa.Column("quarantined_lines", sa.BigInteger),
    # Valid rows of the key not written because the partition already held the same record.
    sa.Column("duplicate_rows", sa.BigInteger),
    sa.Column("discovered_at", sa.DateTime, nullable=False),
    sa.Column("done_at", sa.DateTime),
    sa.Index("ix_keys_claim", "status", "dstrct_code", "part_date", "key_id"),
    sa.Index("ix_keys_batch", "batch_id"),
    sa.Index("ix_keys_device", "device_id", "status"),
    # discovery asks, every tick, for each device's latest hour
    sa.Index("ix_keys_device_hour", "device_id", "key_hour"),
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("batch_id", sa.String(36), primary_key=True),
    sa.Column("run_id", sa.String(64)),
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # NULL in ledgers created before kinds existed: an ingest.
    sa.Column("kind", sa.String(16)),
    sa.Column("lease_until", sa.DateTime, nullable=False),
    # Write intent: the lake directories this batch may write `part-{batch_id}-*` files into.
    sa.Column("target_dirs", sa.Text),
    sa.Column("files", sa.Text),
    sa.Column("keys", sa.Integer, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("quarantined_lines", sa.BigInteger),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("committed_at", sa.DateTime),
    sa.Index("ix_batches_status", "status", "lease_until"),
)

# The manifest: every Parquet file of the lake that a committed batch wrote, one row each. A
# rebuild or compaction swaps files in one transaction here; readers that list LIVE files never
# see a partition half-replaced.
lake_files = sa.Table(
    "lake_files",
    metadata,
    sa.Column("file_id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("path", sa.String(512), nullable=False, unique=True),
    sa.Column("batch_id", sa.String(36), nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("hiveperiod", sa.String(10), nullable=False),
    sa.Column("dstrct_code", sa.String(64), nullable=False),
    # The partition whose keys the rows came from (rows crossing midnight live in the next date).
    sa.Column("part_date", sa.String(10), nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("bytes", sa.BigInteger),
    sa.Column("state", sa.String(16), nullable=False),
    # A WRITING rebuild or compaction that will retire this file when it commits.
    sa.Column("retire_by", sa.String(36)),
    sa.Column("committed_at", sa.DateTime, nullable=False),
    sa.Column("retired_at", sa.DateTime),
    sa.Index("ix_lake_files_dir", "dataset", "hiveperiod", "dstrct_code", "state"),
    sa.Index("ix_lake_files_source", "part_date", "dstrct_code", "state"),
    sa.Index("ix_lake_files_retire", "retire_by"),
    # recovery looks for RETIRED files left undeleted on every claim: a seek, not a scan
    sa.Index("ix_lake_files_state", "state"),
)

# The record fields of each dataset: the type a field's column has in the lake and where it was
# first seen. A value of another type is cast to it where that is lossless, otherwise it is kept
# in the row's `_rescued` column; numbers only ever widen (BIGINT -> DOUBLE).
schema_fields = sa.Table(
    "schema_fields",
    metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("field", sa.String(400), primary_key=True),
    sa.Column("type", sa.Text, nullable=False),
    sa.Column("first_key", sa.String(1024), nullable=False),
    sa.Column("first_batch_id", sa.String(36), nullable=False),
    # The partition of the batch that first carried it, for the day's schema changes.
    sa.Column("first_part_date", sa.String(10), nullable=False),
    sa.Column("first_dstrct_code", sa.String(64), nullable=False),
    sa.Column("first_seen_at", sa.DateTime, nullable=False),
    # The last widening of the type: from what, by which batch, when.
    sa.Column("previous_type", sa.Text),
    sa.Column("changed_by_batch_id", sa.String(36)),
    sa.Column("changed_part_date", sa.String(10)),
    sa.Column("changed_dstrct_code", sa.String(64)),
    sa.Column("changed_at", sa.DateTime),
)


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file a batch wrote: its path in the lake (`dataset/hiveperiod=D/dstrct_code=R/name`)."""

    path: str
    rows: int | None
    bytes: int | None

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def hiveperiod(self) -> str:
        return self.path.split("hiveperiod=", 1)[1][:10]


# Columns added since the first ledgers were created; `create_schema` adds them where missing.
_ADDED_COLUMNS = (
    (batches, batches.c.kind),
    (keys, keys.c.prior_status),
    (keys, keys.c.prior_batch_id),
    (keys, keys.c.duplicate_rows),
)


def create_schema(engine: sa.Engine) -> None:
    """Create missing tables; upgrade a ledger from before batch kinds and the file manifest."""
    fresh = not sa.inspect(engine).has_table("lake_files")
    metadata.create_all(engine)
    for table, column in _ADDED_COLUMNS:
        if column.name not in {c["name"] for c in sa.inspect(engine).get_columns(table.name)}:
            kind = column.type.compile(engine.dialect)
            with engine.begin() as conn:
                conn.execute(sa.text(f"ALTER TABLE {table.name} ADD {column.name} {kind}"))
    if fresh:
        _fill_manifest(engine)


def _fill_manifest(engine: sa.Engine) -> None:
    """Record the files of batches committed before the manifest existed as LIVE."""
    with engine.begin() as conn:
        committed = conn.execute(
            sa.select(
                batches.c.batch_id, batches.c.part_date, batches.c.dstrct_code, batches.c.files, batches.c.committed_at
            ).where(batches.c.status == COMMITTED)
        ).all()
        rows = [
            {
                "path": f.path,
                "batch_id": b.batch_id,
                "dataset": f.dataset,
                "hiveperiod": f.hiveperiod,
                "dstrct_code": b.dstrct_code,
                "part_date": b.part_date,
                "state": LIVE,
                "committed_at": b.committed_at,
            }
            for b in committed
            for f in (LakeFile(path, None, None) for path in json.loads(b.files or "[]"))
        ]
        if rows:
            conn.execute(sa.insert(lake_files), rows)

"""Ledger tables (SQLAlchemy Core): one schema for MSSQL, PostgreSQL and SQLite."""

from __future__ import annotations

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
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("rows", sa.BigInteger),
    sa.Column("quarantined_lines", sa.BigInteger),
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


def create_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine)
